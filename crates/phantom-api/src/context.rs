//! Code contexts: a long-lived interpreter inside a persistent sandbox whose state
//! (variables, imports) persists between calls. One model for every front end: the
//! HTTP API (`/api/v2/sandboxes/{name}/contexts`), the MCP tools (`create_context`,
//! `run_code` with a `sandbox`) and the E2B code interpreter, which maps these onto
//! E2B's wire format.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::request::Quantity;

/// The languages a context can run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContextLanguage {
    /// python3, with matplotlib figures returned as PNG (Agg backend).
    #[default]
    Python,
    /// node: cells share one vm context (globals and top-level `let`/`const`
    /// persist), the last expression is the result, top-level `await` works.
    #[serde(alias = "js")]
    Javascript,
}

impl ContextLanguage {
    pub fn as_str(self) -> &'static str {
        match self {
            ContextLanguage::Python => "python",
            ContextLanguage::Javascript => "javascript",
        }
    }

    /// The id of a sandbox's default context of this language (the one a call that
    /// names no context runs in): `default-python`, `default-javascript`.
    pub fn default_context(self) -> String {
        format!("default-{}", self.as_str())
    }
}

/// `POST /api/v2/sandboxes/{name}/contexts`, MCP `create_context`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewContext {
    /// The interpreter (default: python).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<ContextLanguage>,
    /// Its working directory inside the sandbox (default: /workspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// A context, as created and listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContextInfo {
    /// Its id: what `run` and MCP `run_code` take.
    pub id: String,
    pub language: ContextLanguage,
    pub cwd: String,
    /// False once its interpreter ended (it crashed, or the sandbox went): restart it.
    pub alive: bool,
}

/// `POST /api/v2/sandboxes/{name}/contexts/{id}/run`: code to run in a context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextRun {
    /// Python source; the value of its last expression is the main result.
    #[schemars(length(max = 1048576))]
    pub code: String,
    /// Set in the interpreter's environment (`os.environ`) before the code runs; they
    /// stay set for later calls.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Wall-clock limit of this call (`"30s"`, or seconds; default 60s): past it the
    /// code is interrupted (KeyboardInterrupt) and the context keeps its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Quantity>,
    /// Stream the events as Server-Sent Events (stdout, stderr, result, error, done).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// One display result of a call: the representations of a value, as a notebook shows
/// them (matplotlib figures as `png`, pandas DataFrames as `text` and `html`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CellResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// PNG image, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub png: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub markdown: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
    /// The value of the code's last expression (false: a figure it left open, or
    /// something it displayed).
    #[serde(default)]
    pub is_main_result: bool,
}

/// An exception the code raised.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CellError {
    /// Its class: `ZeroDivisionError`, `KeyboardInterrupt`, ...
    pub name: String,
    /// `str()` of it.
    pub value: String,
    /// The traceback from the code's frame on.
    pub traceback: String,
}

/// What a call returned.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CodeResult {
    pub stdout: String,
    pub stderr: String,
    pub results: Vec<CellResult>,
    /// The exception that ended the code, if any (`KeyboardInterrupt` when its
    /// timeout interrupted it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CellError>,
    /// How many calls the context has run, this one included.
    pub execution_count: u64,
    /// The call's timeout interrupted it.
    #[serde(default)]
    pub timed_out: bool,
    /// Output past the cap was dropped (stderr ends with a note saying how much).
    #[serde(default)]
    pub output_truncated: bool,
}

/// One event of a call, in order; `Done` is the last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContextEvent {
    Stdout {
        text: String,
    },
    Stderr {
        text: String,
    },
    Result(CellResult),
    Error(CellError),
    Done {
        execution_count: u64,
        timed_out: bool,
        output_truncated: bool,
    },
}

impl CodeResult {
    /// Fold one event into the result.
    pub fn add(&mut self, event: ContextEvent) {
        match event {
            ContextEvent::Stdout { text } => self.stdout.push_str(&text),
            ContextEvent::Stderr { text } => self.stderr.push_str(&text),
            ContextEvent::Result(r) => self.results.push(r),
            ContextEvent::Error(e) => self.error = Some(e),
            ContextEvent::Done {
                execution_count,
                timed_out,
                output_truncated,
            } => {
                self.execution_count = execution_count;
                self.timed_out = timed_out;
                self.output_truncated = output_truncated;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_run_refuses_unknown_fields() {
        let ok: ContextRun =
            crate::strict::from_slice(br#"{"code": "x + 1", "timeout": "5s"}"#).unwrap();
        assert_eq!(ok.timeout, Some(Quantity("5s".into())));
        assert!(crate::strict::from_slice::<ContextRun>(br#"{"code": "1", "cod": 2}"#).is_err());
        assert!(crate::strict::from_slice::<NewContext>(br#"{"language": "cobol"}"#).is_err());
    }

    #[test]
    fn events_fold_into_a_result() {
        let mut r = CodeResult::default();
        for e in [
            ContextEvent::Stdout { text: "a".into() },
            ContextEvent::Stdout { text: "b\n".into() },
            ContextEvent::Result(CellResult {
                text: Some("2".into()),
                is_main_result: true,
                ..Default::default()
            }),
            ContextEvent::Done {
                execution_count: 3,
                timed_out: false,
                output_truncated: false,
            },
        ] {
            r.add(e);
        }
        assert_eq!(r.stdout, "ab\n");
        assert_eq!(r.results[0].text.as_deref(), Some("2"));
        assert_eq!(r.execution_count, 3);
    }
}
