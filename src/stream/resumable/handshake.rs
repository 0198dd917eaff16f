//! The resume handshake on a new leg: both ends say where they are and
//! prove who they are, then each sends again what the other lacks.
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{ResumeConfig, ResumeKey, Shared, Side};
use crate::proto::stream::{StreamFrame, resume_mac};

/// Both ends send RESUME{next, mac} and check the peer's; then the sender
/// rewinds to what the peer has. Returns the bytes to be sent again.
#[allow(clippy::too_many_arguments)]
pub(super) async fn handshake<R, W>(
    sh: &Shared,
    lr: &mut R,
    lw: &mut W,
    rbuf: &mut BytesMut,
    side: Side,
    conn: u32,
    key: &ResumeKey,
    cfg: ResumeConfig,
) -> Result<u64, String>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    // Without a key (our end-to-end TLS is not complete) we cannot make or
    // check a MAC: we send zeros and take the peer's resume as it comes.
    // That is safe because everything that crossed so far is handshake the
    // end-to-end TLS authenticates itself: bytes a relay forges, drops or
    // replays only make that handshake fail. Without it, a relay freezing
    // between the client's last handshake flight and the agent lost the
    // connection (the client had a key, the agent none).
    let key = key.get();
    let next = sh.book().resume_from();
    let mut out = BytesMut::new();
    let mac = key.map_or([0u8; 32], |k| resume_mac(k, side, conn, next));
    StreamFrame::Resume { next, mac }.encode(&mut out);
    lw.write_all(&out).await.map_err(|e| e.to_string())?;
    lw.flush().await.map_err(|e| e.to_string())?;
    let frame = tokio::time::timeout(cfg.dead_after * 2, async {
        loop {
            if let Some(f) = StreamFrame::decode(rbuf).map_err(|e| e.to_string())? {
                return Ok(f);
            }
            if lr.read_buf(rbuf).await.map_err(|e| e.to_string())? == 0 {
                return Err("leg closed during resume".to_string());
            }
        }
    })
    .await
    .map_err(|_| "no resume from the peer in time".to_string())??;
    let StreamFrame::Resume { next: peer_next, mac: got } = frame else {
        return Err("expected resume".into());
    };
    if let Some(key) = key
        && !crate::util::ct_eq(&resume_mac(key, side.peer(), conn, peer_next), &got)
    {
        // A peer that never said it holds its key may not have one yet (the
        // agent before the client's Finished reached it): its zero MAC is
        // taken, under the same argument as above.
        if got != [0u8; 32] || sh.book().peer_keyed() {
            return Err("resume MAC is wrong".into());
        }
        tracing::info!(conn, "resumed with a peer whose end-to-end handshake was not complete");
    }
    sh.book().on_peer_resume(peer_next, Instant::now()).map_err(|e| e.to_string())
}
