//! The MCP side: rmcp's `ServerHandler` over the tool registry.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData,
    Implementation, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler};
use serde_json::Value;

use crate::engine::Engine;
use crate::tools::{self, Outcome, ToolDef};

/// One MCP server instance (one per stdio connection or HTTP session); they share the
/// engine (its supervisor, scratch directory and metrics).
#[derive(Clone)]
pub struct PhantomMcp {
    engine: Arc<Engine>,
    tools: Arc<Vec<ToolDef>>,
}

impl PhantomMcp {
    pub fn new(engine: Arc<Engine>) -> PhantomMcp {
        let tools = Arc::new(tools::registry(engine.max_output));
        PhantomMcp { engine, tools }
    }

    fn tool(def: &ToolDef) -> Tool {
        let object = |v: &Value| Arc::new(v.as_object().cloned().unwrap_or_default());
        let mut tool = Tool::new(def.name, def.description.clone(), object(&def.input_schema))
            .with_title(def.title)
            .with_raw_output_schema(object(&def.output_schema));
        tool = tool.with_annotations(
            ToolAnnotations::with_title(def.title)
                .read_only(def.read_only)
                .destructive(false)
                .open_world(false),
        );
        tool
    }
}

/// The `progress` of a notification sent `elapsed_s` seconds into a run. It must
/// increase with each notification: the elapsed time in milliseconds does (whole
/// seconds could repeat when the ticker catches up on a late tick).
pub fn progress_of(elapsed_s: f64) -> f64 {
    (elapsed_s * 1000.0).round() / 1000.0
}

pub const INSTRUCTIONS: &str = "Phantom Fragment runs code in isolated Linux sandboxes that \
start in milliseconds. Use run_code for a program in python, node, bash or sh (add `files` \
for more source or data; they appear in the working directory /workspace), run_command \
for any command line as an argv. Each call gets a fresh sandbox that is thrown away \
afterwards: nothing persists between calls. A program's failure is a normal result with \
isError set: read stderr and exit_code.";

impl ServerHandler for PhantomMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "phantom-fragment",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(
            self.tools.iter().map(Self::tool).collect(),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let Some(def) = self.tools.iter().find(|t| t.name == request.name) else {
            return Err(ErrorData::invalid_params(
                format!(
                    "unknown tool {:?}: this server has {}",
                    request.name,
                    self.tools
                        .iter()
                        .map(|t| t.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None,
            ));
        };
        let arguments = request.arguments.clone().unwrap_or_default();
        // notifications/progress while the run lasts, when the client asked for them.
        let progress: crate::engine::Progress = match context.meta.get_progress_token() {
            Some(token) => {
                let peer = context.peer.clone();
                Box::new(move |elapsed_s: f64| {
                    let peer = peer.clone();
                    let param =
                        ProgressNotificationParam::new(token.clone(), progress_of(elapsed_s))
                            .with_message(format!("running for {:.0} s", elapsed_s));
                    tokio::spawn(async move {
                        let _ = peer.notify_progress(param).await;
                    });
                })
            }
            None => Box::new(|_| {}),
        };
        let outcome = tools::call(
            &self.engine,
            def.kind,
            &arguments,
            context.ct.clone(),
            progress,
        )
        .await;
        let result = match outcome {
            Outcome::Structured { value, is_error } => {
                if is_error {
                    CallToolResult::structured_error(value)
                } else {
                    CallToolResult::structured(value)
                }
            }
            Outcome::Message { text, is_error } => {
                let content = vec![ContentBlock::text(text)];
                if is_error {
                    CallToolResult::error(content)
                } else {
                    CallToolResult::success(content)
                }
            }
        };
        Ok(result.into())
    }
}

#[cfg(test)]
mod tests {
    use super::progress_of;

    #[test]
    fn progress_increases_between_ticks_in_the_same_second() {
        // Two ticks that land in the same whole second (a late tick and its catch-up).
        assert!(progress_of(3.402) > progress_of(3.401));
        assert!(progress_of(2.0) < progress_of(2.999));
        assert_eq!(progress_of(1.0004), 1.0);
    }
}
