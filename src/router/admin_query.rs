//! Questions the REST API asks the router.

use std::collections::HashMap;

use tokio::sync::oneshot;

use super::Router;

pub enum AdminQuery {
    /// Registrations per plugin name, for `GET /api/plugins`.
    Counts(oneshot::Sender<HashMap<String, usize>>),
}

impl Router {
    pub(super) fn apply_admin(&mut self, query: AdminQuery) {
        match query {
            AdminQuery::Counts(reply) => {
                let _ = reply.send(self.registry.counts());
            }
        }
    }
}
