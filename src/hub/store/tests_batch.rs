//! Writes that take many rows in one statement, on both engines (as
//! `tests.rs`): a report's audit anchors and deliveries, and the hub's
//! audit records chained together.
use super::tests::both;
use super::*;

/// More rows than one statement binds: the store splits them, and every
/// row lands; an anchor moves, a delivery only rises.
#[tokio::test]
async fn anchors_and_deliveries_of_a_report_go_in_few_statements_and_all_land() {
    both(async |s: Store| {
        let n = 2_500; // chunks of every size in sql::ROW_CHUNKS
        let heads: Vec<_> = (0..n).map(|i| (format!("agent:d{i}"), 3, format!("h{i}"), format!("s{i}"))).collect();
        s.anchor_put_all(&heads, 10).await.unwrap();
        let sources: Vec<String> = (0..n + 5).map(|i| format!("agent:d{i}")).collect();
        let refs: Vec<&str> = sources.iter().map(String::as_str).collect();
        let found = s.anchors_of(&refs).await.unwrap();
        assert_eq!(found.len(), n, "the sources without an anchor are left out");
        assert_eq!(found["agent:d7"], (3, "h7".into(), 10));
        let moved = [("agent:d7".to_string(), 4, "h7b".to_string(), "s7b".to_string())];
        s.anchor_put_all(&moved, 20).await.unwrap();
        assert_eq!(s.anchor("agent:d7").await.unwrap(), Some((4, "h7b".into(), 20)));
        let history = s.anchor_history("agent:d7").await.unwrap();
        assert_eq!(history.iter().map(|h| (h.0, h.3)).collect::<Vec<_>>(), [(3, 10), (4, 20)]);
        assert_eq!(s.anchors().await.unwrap().len(), n);

        let raised: Vec<_> = (0..n).map(|i| (format!("agent:d{i}"), "relay-a".to_string(), 5)).collect();
        s.delivery_raise_all(&raised).await.unwrap();
        let mixed = [("agent:d1".into(), "relay-a".into(), 4), ("agent:d2".into(), "relay-a".into(), 9)];
        s.delivery_raise_all(&mixed).await.unwrap();
        let kept: std::collections::HashMap<_, _> =
            s.deliveries().await.unwrap().into_iter().map(|(source, _, seq)| (source, seq)).collect();
        assert_eq!(kept.len(), n);
        assert_eq!((kept["agent:d1"], kept["agent:d2"], kept["agent:d3"]), (5, 9, 5), "a delivery only rises");
    })
    .await;
}

/// Records chained together: more than one statement's worth verify as one
/// chain, and records another writer appended meanwhile (an admin command)
/// make the batch link again to the stored head, never fork the chain.
#[tokio::test]
async fn audit_records_chained_together_stay_one_chain_with_another_writer() {
    both(async |s: Store| {
        let hub = crate::hub::audit::HubAudit::open(s.clone(), None).await.unwrap();
        hub.record_all((0..600).map(|i| ("anchor", serde_json::json!({"n": i})))).await;
        assert_eq!(hub.head().await.0, 600);
        let admin = crate::hub::audit::HubAudit::open(s.clone(), None).await.unwrap();
        admin.record("user_added", serde_json::json!({"user": "x"})).await;
        admin.record("user_added", serde_json::json!({"user": "y"})).await;
        // The hub's head is 600; the stored one 602.
        hub.record_all((0..3).map(|i| ("anchor", serde_json::json!({"after": i})))).await;
        assert_eq!(hub.head().await.0, 605);
        let lines = s.audit_since(0, 1_000).await.unwrap();
        assert_eq!(crate::audit::verify_lines(lines.join("\n").as_bytes(), crate::audit::GENESIS, 0), Ok(605));
        assert!(lines[601].contains("\"user\":\"y\"") && lines[604].contains("\"after\":2"), "{}", lines[604]);
    })
    .await;
}

/// Rows go in chunks of a few sizes only, largest first, and all of them go.
#[test]
fn rows_go_in_chunks_of_a_few_sizes() {
    for n in [0, 1, 3, 255, 256, 257, 2_500] {
        let rows: Vec<usize> = (0..n).collect();
        let chunks: Vec<&[usize]> = sql::row_chunks(&rows).collect();
        assert!(chunks.iter().all(|c| sql::ROW_CHUNKS.contains(&c.len())), "{n}");
        assert!(chunks.windows(2).all(|w| w[0].len() >= w[1].len()), "{n}: largest first");
        assert_eq!(chunks.concat(), rows, "{n}: every row, in order");
    }
    // 2 500 = 9 × 256 + 3 × 64 + 1 × 4
    assert_eq!(sql::row_chunks(&(0..2_500).collect::<Vec<_>>()).count(), 13);
}
