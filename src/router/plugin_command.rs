//! Hot swap of plugins, from the plugins directory watcher. A new version is prepared off
//! this thread (compiled, instantiated, given the live registrations); here it is brought up
//! to date and switched in between two batches, so no log is lost or delivered twice.

use tokio::sync::oneshot;

use super::Router;
use crate::engine::{AddError, FilterEngine, Plugin, RegistrationId};
use crate::protocol::{ClientError, Code};

pub enum PluginCommand {
    /// The registrations of one filter (id, params), so a new version can be prepared off
    /// this thread.
    Registrations {
        filter: String,
        reply: oneshot::Sender<Vec<(RegistrationId, String)>>,
    },
    /// Switch `name` to `plugin`. For a filter, `registered` are the registrations already
    /// added to it; the router adds those created since and removes those gone. If the new
    /// filter refuses one, nothing changes and the reason comes back.
    Install {
        name: String,
        plugin: Plugin,
        registered: Vec<RegistrationId>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Unload `name` (a filter or a transform): its subscribers get an `error` and lose
    /// their subscription. Answers how many subscriptions ended.
    Remove {
        name: String,
        reply: oneshot::Sender<usize>,
    },
    /// Let a disabled plugin serve again. Answers `None` for an unknown plugin, else whether
    /// it was disabled.
    Enable {
        name: String,
        reply: oneshot::Sender<Option<bool>>,
    },
    /// Stop a plugin (an operator's decision): its subscribers get an `error`
    /// (`filter_disabled`) and lose their subscription. Answers `None` for an unknown plugin
    /// or one that cannot be disabled (the built-in filter), else whether it was serving.
    Disable {
        name: String,
        reply: oneshot::Sender<Option<bool>>,
    },
}

impl Router {
    pub(super) fn apply_plugin(&mut self, command: PluginCommand) {
        match command {
            PluginCommand::Registrations { filter, reply } => {
                let _ = reply.send(self.registry.params_of(&filter));
            }
            PluginCommand::Install {
                name,
                plugin,
                registered,
                reply,
            } => {
                let result = self.install(&name, plugin, &registered);
                let _ = reply.send(result);
            }
            PluginCommand::Enable { name, reply } => {
                let _ = reply.send(self.registry.enable(&name));
            }
            PluginCommand::Disable { name, reply } => {
                let answer = self.registry.disable(&name, "disabled by an operator");
                if answer.is_some() {
                    let (sids, error) = if self.registry.filter_disabled(&name).is_some() {
                        let error = ClientError::new(
                            Code::FilterDisabled,
                            format!("filter `{name}` was disabled by an operator; subscribe again with another filter"),
                        )
                        .for_filter(&name);
                        (self.registry.end_filter(&name), error)
                    } else {
                        let error = ClientError::new(
                            Code::FilterDisabled,
                            format!("transform `{name}` was disabled by an operator; subscribe again without it"),
                        )
                        .for_transform(&name);
                        (self.registry.end_transform_users(&name), error)
                    };
                    self.end_subscriptions(&sids, &error);
                }
                let _ = reply.send(answer);
            }
            PluginCommand::Remove { name, reply } => {
                let sids = self.registry.remove_plugin(&name);
                let error = ClientError::new(
                    Code::FilterRemoved,
                    format!(
                        "plugin `{name}` was removed from the server; subscribe again without it"
                    ),
                )
                .for_filter(&name);
                self.end_subscriptions(&sids, &error);
                let _ = reply.send(sids.len());
            }
        }
    }

    fn install(
        &mut self,
        name: &str,
        plugin: Plugin,
        registered: &[RegistrationId],
    ) -> Result<(), String> {
        let plugin = match plugin {
            Plugin::Filter(engine) => {
                Plugin::Filter(self.bring_up_to_date(name, engine, registered)?)
            }
            transform => transform,
        };
        let kind = plugin.kind();
        let ended = self.registry.install(name, plugin);
        if !ended.is_empty() {
            let error = ClientError::new(
                Code::FilterRemoved,
                format!("plugin `{name}` was replaced by a {kind}; subscribe again"),
            )
            .for_filter(name);
            self.end_subscriptions(&ended, &error);
        }
        Ok(())
    }

    /// Add the registrations of `name` created since `registered` was read, drop those gone.
    fn bring_up_to_date(
        &mut self,
        name: &str,
        mut engine: Box<dyn FilterEngine>,
        registered: &[RegistrationId],
    ) -> Result<Box<dyn FilterEngine>, String> {
        let live = self.registry.params_of(name);
        for (id, params) in &live {
            if !registered.contains(id) {
                engine.add(*id, params).map_err(|e| match e {
                    AddError::Rejected(m) | AddError::Unavailable(m) => {
                        format!("the new version refuses a live subscription ({params}): {m}")
                    }
                })?;
            }
        }
        for id in registered {
            if !live.iter().any(|(l, _)| l == id) {
                engine.remove(*id);
            }
        }
        Ok(engine)
    }
}
