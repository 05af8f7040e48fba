//! `log:subscribe`: the Socket.IO payload decoded as a JSON value → `SubscribeRequest::parse`
//! (as the socket handler does, and again on session resume with `since`/`tail` removed) →
//! `check_scope` against a few token scopes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use logstream::auth::Scope;
use logstream::history;
use logstream::subscription::{
    DEFAULT_FILTER, MAX_PARAMS_BYTES, MAX_TRANSFORMS, SubscribeRequest, check_scope,
    valid_filter_name,
};
use serde_json::Value;

/// `Config::tail_max`'s default.
const TAIL_MAX: usize = 1000;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let request = match SubscribeRequest::parse(value.clone(), TAIL_MAX) {
        Ok(r) => r,
        Err(e) => {
            assert!(!e.field.is_empty(), "an error names no field: {e}");
            assert!(!e.message.is_empty());
            return;
        }
    };

    // What parse promises of an accepted subscription.
    assert!(matches!(value, Value::Null | Value::Object(_)));
    assert!(valid_filter_name(&request.filter), "filter {:?}", request.filter);
    assert!(request.params.is_object());
    assert!(request.params.to_string().len() <= MAX_PARAMS_BYTES);
    assert!(request.transform.len() <= MAX_TRANSFORMS);
    for step in &request.transform {
        assert!(valid_filter_name(&step.name));
        assert!(step.params.is_object());
        assert!(step.params.to_string().len() <= MAX_PARAMS_BYTES);
    }
    assert!(request.rate_limit.is_none_or(|r| r >= 1));
    assert!(request.tail.is_none_or(|t| (1..=TAIL_MAX).contains(&t)));
    assert!(request.since.as_deref().is_none_or(history::is_offset));
    assert!(!(request.since.is_some() && request.tail.is_some()));
    assert!(request.session.is_none());
    assert_eq!(
        request.resumable(),
        request.resume || request.since.is_some() || request.tail.is_some()
    );
    if request.filter == DEFAULT_FILTER && value.get("filter").is_none_or(Value::is_null) {
        // The seed shape: the params are the request minus the host's fields.
        let mut expected = value.as_object().cloned().unwrap_or_default();
        for k in ["batch", "rateLimit", "resume", "since", "tail", "transform", "filter"] {
            expected.remove(k);
        }
        assert_eq!(request.params, Value::Object(expected));
    }

    // A resumable session keeps the request without `since`/`tail` and parses it again on
    // resume (socket/mod.rs): that must succeed and give the same subscription.
    let mut kept = value.clone();
    if let Some(obj) = kept.as_object_mut() {
        obj.remove("since");
        obj.remove("tail");
    }
    let resumed = SubscribeRequest::parse(kept, TAIL_MAX)
        .unwrap_or_else(|e| panic!("an accepted subscription is refused on resume: {e}"));
    assert_eq!(
        resumed,
        SubscribeRequest {
            since: None,
            tail: None,
            ..request.clone()
        }
    );

    // Scopes from the token.
    let all = Scope::all();
    assert!(check_scope(&request.filter, &request.params, &all).is_ok());
    let none = Scope::parse(&[]).unwrap();
    assert!(check_scope(&request.filter, &request.params, &none).is_err());
    let some = Scope::parse(&["plant-a/*".into(), "*-gw".into(), "x*y*z".into(), "d1".into()])
        .unwrap();
    let verdict = check_scope(&request.filter, &request.params, &some);
    if request.filter != DEFAULT_FILTER {
        assert!(verdict.is_ok());
    }
    if let Err(e) = verdict {
        assert_eq!(e.field.as_deref(), Some("deviceIds"));
    }
    // A token whose patterns are exactly the requested devices admits the subscription.
    let devices: Vec<String> = request
        .params
        .get("deviceIds")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    if let Ok(own) = Scope::parse(&devices)
        && !own.is_empty()
    {
        if let Err(e) = check_scope(&request.filter, &request.params, &own) {
            panic!("devices {devices:?} are refused by a scope of themselves: {}", e.message);
        }
    }
});
