//! The agent's JSON reader and writer (`agent/src/json.rs`) on arbitrary
//! bytes.
//!
//! * Parsing never panics, and accepts only JSON: what it accepts,
//!   serde_json accepts as JSON text (syntax only: `IgnoredAny`), and what
//!   serde_json parses into a value (UTF-8, numbers in f64 range, depth ≤
//!   128) the agent parses too.
//! * What parses is written (compact and pretty) as JSON text (serde_json
//!   again) that parses back to the same value: numbers as written, lone
//!   surrogates as U+FFFD (a `String` never holds one, so the text is
//!   UTF-8).
//! * A value built by hand from the input (the input as a string, a key
//!   and a number) is written as JSON too; the number only when it is a
//!   JSON number, else `null`.
#![no_main]

use layerlink_agent::json::{parse, Value};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;

/// `v` written compact and pretty: JSON text that reads back as `v`.
fn writes_back(v: &Value) {
    for text in [v.to_compact(), v.to_pretty()] {
        if let Err(e) = serde_json::from_str::<IgnoredAny>(&text) {
            panic!("wrote invalid JSON ({e}): {text:?}");
        }
        assert_eq!(
            parse(text.as_bytes()).as_ref(),
            Ok(v),
            "written text reads back differently: {text:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(v) => {
            if let Err(e) = serde_json::from_slice::<IgnoredAny>(data) {
                panic!("accepted what is not JSON ({e})");
            }
            writes_back(&v);
        }
        Err(e) => {
            assert!(!e.is_empty());
            if serde_json::from_slice::<serde_json::Value>(data).is_ok() {
                panic!("refused JSON serde_json reads: {e}");
            }
        }
    }

    let s = String::from_utf8_lossy(data).into_owned();
    let hand = Value::Obj(vec![
        ("s".into(), Value::str(s.clone())),
        ("n".into(), Value::Num(s.clone())),
        (s.clone(), Value::Arr(vec![Value::Null, Value::Bool(true)])),
    ]);
    let text = hand.to_compact();
    if let Err(e) = serde_json::from_str::<IgnoredAny>(&text) {
        panic!("wrote invalid JSON ({e}): {text:?}");
    }
    let back = parse(text.as_bytes()).expect("own output parses");
    assert_eq!(back.get("s").and_then(Value::as_str), Some(s.as_str()));
    let is_number = parse(s.as_bytes()) == Ok(Value::Num(s.clone()));
    let want_n = if is_number {
        Value::Num(s.clone())
    } else {
        Value::Null
    };
    assert_eq!(back.get("n"), Some(&want_n), "number {s:?}");
});
