//! Repository metadata as a device will receive it through its relay:
//! arbitrary bytes never panic the envelope parser, the role decoders, the
//! root's self-check, or an update against a trusted root.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tether::repo::meta::{Envelope, Root, Snapshot, Targets, Timestamp};
use tether::repo::trust::{Fetched, Trusted};

const DEV_ROOT: &[u8] = include_bytes!("../seeds/repo_metadata/root.json");

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::parse("fuzz", data) {
        let _ = env.peek::<Root>();
        let _ = env.peek::<Targets>();
        let _ = env.peek::<Snapshot>();
        let _ = env.peek::<Timestamp>();
        let _ = env.reference(1);
        let _ = Trusted::new(env);
    }
    if let Ok(f) = serde_json::from_slice::<Fetched>(data)
        && let Ok(root) = Envelope::parse("root", DEV_ROOT)
        && let Ok(mut t) = Trusted::new(root)
    {
        let _ = t.update(f, 1_796_000_000);
        let _ = t.target("tool/1.0", Some("scanner"));
    }
});
