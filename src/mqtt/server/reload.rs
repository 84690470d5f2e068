//! Configuration reloads: limits at once, changed models loaded beside the running ones.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use log::{error, info, warn};

use super::event_loop::{Loaded, Loop};
use super::messages::Msg;
use crate::mqtt::lifecycle::Reload;
use crate::mqtt::models;
use crate::mqtt::settings::Settings;

impl Loop {
    /// A new configuration (SIGHUP: the service read every source again). Limits and
    /// sampling defaults apply at once; changed and added models load beside the running ones,
    /// which serve until the new ones are ready ([`Loop::swap_engine`]); `[mqtt]` and `[node]`
    /// need a restart. An invalid new configuration, or one the memory guard refuses, is
    /// refused and the running one kept.
    pub(super) fn reload(&mut self, new: Reload) {
        if self.pending.is_some() {
            warn!("reload: a new model is still loading; try again once it is ready");
            return;
        }
        self.lifecycle.reloading("reloading the configuration");
        let mut new = match new {
            Ok(s) => s,
            Err(e) => return self.reload_refused(&e),
        };
        let old = self.settings.clone();
        if new.mqtt != old.mqtt || new.node != old.node || new.homeassistant != old.homeassistant {
            warn!(
                "reload: [mqtt], [node] and [homeassistant] changes apply after a restart; \
                 keeping the running ones"
            );
            new.mqtt = old.mqtt.clone();
            new.node = old.node.clone();
            new.homeassistant = old.homeassistant.clone();
        }
        let plan = models::plan_reload(&old, &new);
        if !plan.load.is_empty() || !plan.removed.is_empty() {
            let names: Vec<&str> = plan.load.iter().map(|c| c.model_name.as_str()).collect();
            let what = match names.as_slice() {
                [] => "nothing (models removed)".to_owned(),
                [one] => format!("model {one}"),
                all => format!("models {}", all.join(", ")),
            };
            self.lifecycle.status(&format!("reloading: loading {what}"));
            // The memory guard reads model headers: off the event loop, like the loads.
            let checked = new.clone();
            let task = tokio::task::spawn_blocking(move || {
                models::guard_reload(&old, &checked, &plan).map_err(|e| e.to_string())?;
                Ok(models::load(plan.load))
            });
            self.pending = Some((Box::new(new), task));
            self.reloading.store(true, Ordering::Relaxed);
            self.status_now.notify_one();
            return;
        }
        if let Err(e) = self.models.retune(&plan) {
            return self.reload_refused(&e);
        }
        self.settings = Arc::new(new);
        self.formats.clear();
        self.reloaded(&[]);
    }

    /// The end of a reload that loaded models: serve with them and let the replaced ones
    /// drain; a model whose load failed keeps its running engine.
    pub(super) fn swap_engine(&mut self, settings: Settings, loaded: Loaded) {
        let loaded = match loaded {
            Ok(l) => l,
            Err(why) => return self.reload_refused(&why),
        };
        let applied = self.models.apply_reload(&self.settings, settings, loaded);
        if let Err(e) = applied
            .models
            .retune(&models::plan_reload(&self.settings, &applied.settings))
        {
            warn!("reload: {e}");
        }
        let (old_names, new_names) = (self.models.names(), applied.models.names());
        let gone: Vec<String> = old_names
            .iter()
            .filter(|n| !new_names.contains(n))
            .flat_map(|n| self.topics.model_subscriptions(n))
            .collect();
        let added: Vec<String> = new_names
            .iter()
            .filter(|n| !old_names.contains(n))
            .flat_map(|n| self.topics.model_subscriptions(n))
            .collect();
        self.topics.set_models(&new_names);
        if !gone.is_empty() {
            let _ = self.tx.send(Msg::Unsubscribe(gone));
        }
        if !added.is_empty() {
            let _ = self.tx.send(Msg::Subscribe(added));
        }
        self.models = applied.models;
        self.engines.send_replace(self.models.clone());
        let drain = self.settings.limits.shutdown_drain;
        for old in applied.retired {
            self.retiring
                .push(tokio::task::spawn_blocking(move || old.shutdown(drain)));
        }
        self.retiring.retain(|t| !t.is_finished());
        self.settings = Arc::new(applied.settings);
        self.formats.clear();
        self.reloaded(&applied.failures);
    }

    fn reloaded(&mut self, failures: &[String]) {
        let s = &self.settings;
        let serving = self.models.names().join(", ");
        if failures.is_empty() {
            info!("configuration reloaded from {}", s.source);
            self.lifecycle
                .ready(&format!("configuration reloaded; serving {serving}"));
        } else {
            let why = failures.join("; ");
            error!("configuration reloaded from {} in part: {why}", s.source);
            self.lifecycle.ready(&format!(
                "configuration reloaded in part ({why}); serving {serving}"
            ));
        }
        self.status_now.notify_one();
    }

    fn reload_refused(&mut self, why: &str) {
        error!("reload refused, the running configuration stays: {why}");
        self.lifecycle.ready(&format!(
            "reload refused ({why}); serving with the previous configuration"
        ));
    }
}
