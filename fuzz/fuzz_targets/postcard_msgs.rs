//! Decode every request/response type from arbitrary bytes; whatever
//! decodes must re-encode and decode back to the same value, and the
//! re-encoding must be stable.
#![no_main]

use layerlink_proto::error::{ErrorBody, ErrorCode};
use layerlink_proto::msg::*;
use layerlink_proto::Digest;
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let Ok((v, rest)) = postcard::take_from_bytes::<T>(data) else {
        return;
    };
    assert!(rest.len() <= data.len());
    let enc = postcard::to_allocvec(&v).expect("a decoded value must encode");
    let (back, rest2) = postcard::take_from_bytes::<T>(&enc).expect("own encoding must decode");
    assert!(rest2.is_empty(), "own encoding has trailing bytes");
    assert_eq!(v, back, "round trip changed the value");
    let enc2 = postcard::to_allocvec(&back).unwrap();
    assert_eq!(enc, enc2, "encoding is not stable");
    // The canonical encoding is never longer than what was accepted.
    assert!(enc.len() <= data.len() - rest.len());
}

fuzz_target!(|data: &[u8]| {
    round_trip::<Platform>(data);
    round_trip::<ImageRef>(data);
    round_trip::<HeldSet>(data);
    round_trip::<Holdings>(data);
    round_trip::<PlanRequest>(data);
    round_trip::<LayerCost>(data);
    round_trip::<LayerState>(data);
    round_trip::<LayerPlan>(data);
    round_trip::<ImagePlan>(data);
    round_trip::<PlanResponse>(data);
    round_trip::<ArchiveRequest>(data);
    round_trip::<ObjectsRequest>(data);
    round_trip::<HeldImage>(data);
    round_trip::<Report>(data);
    round_trip::<ReportAck>(data);
    round_trip::<ErrorBody>(data);
    round_trip::<ErrorCode>(data);
    round_trip::<Digest>(data);
});
