//! Turning a client's startup parameters into session settings, and telling the client its ParameterStatus values.
//! Server connections log in with only user and database, so a client's startup parameters (application_name,
//! DateStyle, `options=-c ...`) become SET statements applied on whichever server it gets, and are also what RESET
//! returns to. Values equal to the server's defaults are dropped, so most clients need no SET at all.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::protocol::startup::StartupParams;
use crate::router::proxy_commands::{startup_value, ProxyCommandError, ProxyValue, PREFIX};
use crate::router::session_effects::{startup_options, Setting};

/// Parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Compares encodings and similar values the way Postgres treats their spellings ("UTF8" = "utf-8").
fn normalized(v: &str) -> String {
    v.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn baseline_value<'a>(
    baseline: &'a BTreeMap<String, String>,
    name: &str,
) -> Option<(&'a str, &'a str)> {
    baseline
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(k, v)| (k.as_str(), v.as_str()))
}

/// Session settings (name -> SET statement) requested at startup.
pub fn startup_settings(
    params: &StartupParams,
    ignore: &[String],
    baseline: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut add = |name: &str, value: &str| {
        if ignore.iter().any(|i| i.eq_ignore_ascii_case(name)) || is_proxy_setting(name) {
            return;
        }
        if let Some((_, base)) = baseline_value(baseline, name) {
            if normalized(base) == normalized(value) {
                return;
            }
        }
        let s = Setting::from_startup(name, value);
        out.insert(s.name, s.apply);
    };
    if let Some(options) = params.params.get("options") {
        for (k, v) in startup_options(options) {
            add(&k, &v);
        }
    }
    for (k, v) in &params.params {
        if !NOT_SETTINGS.contains(&k.as_str()) && !k.starts_with("_pq_.") {
            add(k, v);
        }
    }
    out
}

/// Whether `name` is one of shardpool's own settings, which the session keeps and never forwards.
fn is_proxy_setting(name: &str) -> bool {
    name.get(..PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
}

/// The `shardpool.*` settings a client asked for at startup (in `options` as `-c shardpool.x=v` or
/// `--shardpool.x=v`, or as parameters of their own), in order; a later one overrides an earlier one, as for
/// Postgres' own `-c`. An unknown name or a bad value refuses the login, as Postgres refuses a bad `-c`.
pub fn proxy_settings(params: &StartupParams) -> Result<Vec<ProxyValue>, ProxyCommandError> {
    let mut out = Vec::new();
    let from_options = params
        .params
        .get("options")
        .map(|o| startup_options(o))
        .unwrap_or_default();
    let own = params.params.iter().map(|(k, v)| (k.clone(), v.clone()));
    for (name, value) in from_options.into_iter().chain(own) {
        if let Some(v) = startup_value(&name, &value)? {
            out.push(v);
        }
    }
    Ok(out)
}

/// What a client has been told in ParameterStatus messages: the pool's baseline (shared by every client of the
/// pool) and the values where this client differs.
#[derive(Debug)]
pub struct Told {
    base: Arc<BTreeMap<String, String>>,
    /// Copy on write: clients that logged in with the same parameters share one map (see `Context::share_told`).
    own: Arc<BTreeMap<String, String>>,
}

impl Told {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.own
            .get(name)
            .or_else(|| self.base.get(name))
            .map(String::as_str)
    }

    pub fn set(&mut self, name: &str, value: &str) {
        if self.base.get(name).map(String::as_str) == Some(value) {
            if self.own.contains_key(name) {
                Arc::make_mut(&mut self.own).remove(name);
            }
        } else if self.own.get(name).map(String::as_str) != Some(value) {
            Arc::make_mut(&mut self.own).insert(name.to_owned(), value.to_owned());
        }
    }

    /// Lets `share` replace this client's own values with an equal shared map (see `Context::share_told`).
    pub fn share_own(
        &mut self,
        share: impl FnOnce(Arc<BTreeMap<String, String>>) -> Arc<BTreeMap<String, String>>,
    ) {
        self.own = share(std::mem::take(&mut self.own));
    }

    /// Every (name, value), sorted, for the login reply.
    pub fn all(&self) -> Vec<(String, String)> {
        let mut v: BTreeMap<&str, &str> = self
            .base
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for (k, val) in self.own.iter() {
            v.insert(k, val);
        }
        v.into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// The ParameterStatus set a client is told at login: the server's values, with the client's own startup values
/// for the parameters it set.
pub fn initial_status(params: &StartupParams, baseline: &Arc<BTreeMap<String, String>>) -> Told {
    let mut told = Told {
        base: Arc::clone(baseline),
        own: Arc::default(),
    };
    let mut apply = |name: &str, value: &str| {
        if let Some((canonical, base)) = baseline_value(baseline, name) {
            if normalized(base) != normalized(value) {
                told.set(canonical, value);
            }
        }
    };
    if let Some(options) = params.params.get("options") {
        for (k, v) in startup_options(options) {
            apply(&k, &v);
        }
    }
    for (k, v) in &params.params {
        if !NOT_SETTINGS.contains(&k.as_str()) {
            apply(k, v);
        }
    }
    told
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> StartupParams {
        StartupParams {
            minor_version: 0,
            params: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn shardpool_settings_are_kept_not_forwarded() {
        use crate::router::consistency::Consistency;
        let p = params(&[
            ("user", "u"),
            (
                "options",
                r"-c shardpool.consistency=eventual --work-mem=7MB",
            ),
            ("shardpool.causal_token", "0/10"),
        ]);
        let s = startup_settings(&p, &[], &BTreeMap::new());
        assert_eq!(s.keys().collect::<Vec<_>>(), ["work_mem"]);
        assert_eq!(
            proxy_settings(&p).unwrap(),
            [
                ProxyValue::Consistency(Consistency::Eventual),
                ProxyValue::CausalToken("0/10".into())
            ]
        );
        let bad = params(&[("options", "-c shardpool.consistency=maybe")]);
        assert_eq!(proxy_settings(&bad).unwrap_err().sqlstate(), "22023");
        let unknown = params(&[("options", "-c SHARDPOOL.Nope=1")]);
        assert_eq!(proxy_settings(&unknown).unwrap_err().sqlstate(), "42704");
    }

    #[test]
    fn defaults_cost_nothing_and_others_become_sets() {
        let baseline: BTreeMap<_, _> = [
            ("client_encoding", "UTF8"),
            ("application_name", ""),
            ("TimeZone", "UTC"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let p = params(&[
            ("user", "u"),
            ("client_encoding", "utf-8"),
            ("application_name", "app"),
            ("extra_float_digits", "2"),
            ("options", "-c TimeZone=Asia/Tokyo"),
        ]);
        let s = startup_settings(&p, &["extra_float_digits".into()], &baseline);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s["application_name"], "SET application_name TO 'app'");
        assert_eq!(s["timezone"], "SET timezone TO 'Asia/Tokyo'");
        let told = initial_status(&p, &Arc::new(baseline.clone()));
        assert_eq!(told.get("application_name"), Some("app"));
        assert_eq!(told.get("TimeZone"), Some("Asia/Tokyo"));
        assert_eq!(told.get("client_encoding"), Some("UTF8"));
        assert_eq!(
            told.own.len(),
            2,
            "only the differences are stored per client"
        );
    }
}
