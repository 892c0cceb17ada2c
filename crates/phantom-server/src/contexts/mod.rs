//! The code contexts this server holds ([`phantom_engine::contexts`]), shared by the
//! HTTP API (`/api/v2/sandboxes/{name}/contexts`), `/mcp/v1/` and the E2B code
//! interpreter: one registry, keyed by owner and sandbox, so that a context made over
//! one front end is reachable over the others by its owner only.

use std::sync::Arc;

use phantom_engine::contexts::CodeContexts;

#[derive(Default)]
pub struct Contexts {
    pub all: Arc<CodeContexts>,
}

impl Contexts {
    /// Stop the contexts of the E2B sandbox `id` (E2B's ids are unique across owners).
    pub fn remove_sandbox(&self, id: &str) {
        self.all.remove_sandbox_named(id);
    }
}
