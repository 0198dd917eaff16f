//! Retired devices in the store, on both engines (as `tests.rs`).
use super::tests::{both, user};
use super::*;
use crate::hub::model::{Device, Role, SessionRecord};

#[tokio::test]
async fn a_retired_device_leaves_every_list_but_keeps_its_row_and_comes_back() {
    use crate::hub::model::Retired;
    both(async |s: Store| {
        s.device_add(&Device::new("INJ-1", "st-marys", "auto"), 5).await.unwrap();
        s.device_add(&Device::new("INJ-2", "st-marys", "required"), 5).await.unwrap();
        assert!(!s.site_has_specialist("st-marys").await.unwrap());
        s.user_add(&user("boss", Role::Admin)).await.unwrap();
        s.entitle("boss", "st-marys").await.unwrap();
        assert!(!s.site_has_specialist("st-marys").await.unwrap(), "an admin is no specialist");
        s.user_add(&user("eve", Role::Engineer)).await.unwrap();
        s.entitle("eve", "st-marys").await.unwrap();
        assert!(s.site_has_specialist("st-marys").await.unwrap());
        s.user_set_disabled("eve", true).await.unwrap();
        assert!(!s.site_has_specialist("st-marys").await.unwrap(), "a disabled account reaches nothing");
        s.user_set_disabled("eve", false).await.unwrap();
        let r = Retired { at: 100, by: "cli:ops".into(), reason: "sold; 'quoted' $(x)".into() };
        assert!(s.device_retire("INJ-1", &r).await.unwrap());
        let again = Retired { at: 200, by: "console:boss".into(), reason: "twice".into() };
        assert!(!s.device_retire("INJ-1", &again).await.unwrap(), "retired once: the first record stays");
        assert!(!s.device_retire("NOPE", &again).await.unwrap());
        let d = s.device("INJ-1").await.unwrap().unwrap();
        assert_eq!(d.retired.as_ref(), Some(&r), "kept verbatim");
        let ids = |v: Vec<Device>| v.into_iter().map(|d| d.id).collect::<Vec<_>>();
        assert_eq!(ids(s.devices_for("", true).await.unwrap()), ["INJ-2"]);
        assert_eq!(ids(s.devices_for("eve", false).await.unwrap()), ["INJ-2"]);
        assert_eq!(s.devices_of_site("st-marys").await.unwrap(), ["INJ-2"], "a rollout passes it by");
        assert_eq!(ids(s.devices_retired().await.unwrap()), ["INJ-1"]);
        assert_eq!(s.devices_retired_since(100).await.unwrap(), [("INJ-1".to_string(), 100)]);
        assert!(s.devices_retired_since(101).await.unwrap().is_empty());
        assert_eq!(s.devices_retired_since(0).await.unwrap().len(), 1, "in service (retired_at 0) never counts");
        // Its sessions still name it.
        let mut rec =
            SessionRecord { id: "s-1".into(), device: "INJ-1".into(), state: "live".into(), ..Default::default() };
        rec.expires_at = 500;
        s.session_add(&rec).await.unwrap();
        assert_eq!(s.device_open_sessions("INJ-1").await.unwrap(), [("s-1".to_string(), 500)]);
        // Retired at 100 with a session still open: unfinished, once old enough.
        let unfinished = async |before| ids(s.devices_retired_unfinished(before, 400).await.unwrap());
        assert_eq!(unfinished(100).await, ["INJ-1"]);
        assert!(unfinished(99).await.is_empty(), "too recent: maybe still in progress");
        let at = async |now| s.devices_retired_unfinished(1000, now).await.unwrap().len();
        assert_eq!((at(499).await, at(500).await), (1, 0), "a grant past its expiry admits nothing");
        assert!(s.session_revoke("s-1", ("cli:ops", "device_retired"), 110).await.unwrap());
        let rec = s.session("s-1").await.unwrap().unwrap();
        assert_eq!((rec.state.as_str(), rec.end_reason.as_deref()), ("revoked", Some("device_retired")));
        assert!(unfinished(1000).await.is_empty(), "nothing open any more");
        let job = crate::api::JobView {
            id: "j-1".into(),
            device: "INJ-1".into(),
            kind: crate::api::JobKind::Run,
            target: "hello".into(),
            state: crate::api::JobState::InProgress,
            reason: String::new(),
            consent_required: false,
            created_by: "eve".into(),
            created_at: 90,
            updated_at: 90,
            deadline: 9000,
            output: String::new(),
            rollout: String::new(),
        };
        s.job_add(&job).await.unwrap();
        assert_eq!(unfinished(1000).await, ["INJ-1"], "a job in progress is open");
        assert!(s.device_reinstate("INJ-1").await.unwrap());
        assert!(unfinished(1000).await.is_empty(), "a device in service is never unfinished");
        assert!(!s.device_reinstate("INJ-1").await.unwrap(), "in service already");
        assert_eq!(s.device("INJ-1").await.unwrap().unwrap(), Device::new("INJ-1", "st-marys", "auto"));
        assert_eq!(ids(s.devices_for("eve", false).await.unwrap()), ["INJ-1", "INJ-2"]);
        assert!(s.devices_retired().await.unwrap().is_empty());
    })
    .await;
}
