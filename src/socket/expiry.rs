//! Connections live as long as their token: `auth:expired` goes out `auth_expiry_notice_ms`
//! before the token's `exp`, and at `exp` the connection is closed, unless the client sent
//! `auth:refresh` with a newer token meanwhile (which starts the wait over).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use socketioxide::extract::SocketRef;

use super::session::Session;
use crate::protocol::{AuthExpiring, event};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Watch `session`'s grant until the socket goes; runs as one task per connection, started
/// during the handshake: it waits for the connection first, and gives up on a handshake that
/// never completes.
pub async fn watch(socket: SocketRef, session: Arc<Session>, notice: Duration) {
    let within = super::HANDSHAKE_TIMEOUT + Duration::from_secs(1);
    if tokio::time::timeout(within, session.connected())
        .await
        .is_err()
        || session.is_closed()
    {
        return;
    }
    // The `exp` already warned about, so a refresh to a later one warns again.
    let mut warned_for = 0;
    loop {
        if session.is_closed() {
            return;
        }
        let exp = session.grant().expires_at;
        let now = unix_now();
        let left = Duration::from_secs(exp.saturating_sub(now));
        let wait = if warned_for != exp && left > notice {
            left - notice
        } else if warned_for != exp {
            warned_for = exp;
            let _ = socket.emit(
                event::AUTH_EXPIRED,
                &AuthExpiring {
                    expires_at: exp,
                    seconds_left: left.as_secs(),
                },
            );
            left
        } else {
            left
        };
        if warned_for == exp && wait.is_zero() {
            tracing::info!(target: "audit", sid = %socket.id, user = %session.user, "token expired; disconnecting");
            let _ = socket.clone().disconnect();
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = session.changed.notified() => {}
        }
        // A handshake that never completed leaves no disconnect to wait for.
        if !socket.connected() {
            return;
        }
    }
}
