//! [`listen`]: PostgreSQL `LISTEN` on a dedicated connection that comes
//! back by itself.
//!
//! Notifications are hints, not a log: PostgreSQL drops them while a
//! listener is disconnected. So every (re)connection is announced as
//! [`Notice::Resync`], after the `LISTEN`s are in place, and a consumer
//! answers it by re-reading the state it follows; anything changed before
//! that read is in it, anything after is notified. Consumers that cannot
//! afford even that window keep a periodic poll as well.
//!
//! The task ends when its receiver is dropped: a listener lives exactly as
//! long as its owner.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::DbError;
use crate::postgres::{PgPool, client_config, error_text};

/// What a listener hands its consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The listener (re)connected and listens again: notifications may have
    /// been lost before this, so re-read what you follow.
    Resync,
    /// A `NOTIFY` on one of the channels.
    Notify { channel: String, payload: String },
}

/// Reconnection backoff: first retry after the minimum, doubling to the
/// maximum, reset by a connection that reached `LISTEN`.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The name of a notification channel of `topic` under the pool's schema,
/// so servers on different schemas of one database never hear each other.
/// PostgreSQL truncates identifiers to 63 bytes, so a longer name is an
/// error rather than a silent collision.
pub fn channel_name(pool: &PgPool, topic: &str) -> Result<String, DbError> {
    let name = format!("{}.{topic}", pool.settings().schema);
    if name.len() > 63 {
        return Err(DbError::Invalid(format!(
            "the notification channel {name:?} is longer than PostgreSQL's 63 bytes: use a shorter --postgres-schema"
        )));
    }
    Ok(name)
}

/// Listens on `channels` over a connection of its own, named
/// `application_name` on the server (so an operator, or a test, can tell
/// it apart in `pg_stat_activity`). Returns at once; the connection is
/// opened in the background and reopened whenever it is lost, each time
/// followed by a [`Notice::Resync`].
pub fn listen(
    pool: &PgPool,
    application_name: &str,
    channels: Vec<String>,
) -> Result<mpsc::Receiver<Notice>, DbError> {
    let config = client_config(pool.settings(), application_name)?;
    let target = pool.target().to_owned();
    let label = application_name.to_owned();
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        loop {
            match listen_once(&config, &channels, &tx).await {
                Ended::ReceiverGone => return,
                Ended::Lost(reason) => {
                    metrics::counter!("riskhost_db_listen_reconnects_total", "listener" => label.clone())
                        .increment(1);
                    metrics::gauge!("riskhost_db_listen_connected", "listener" => label.clone())
                        .set(0.0);
                    tracing::warn!(listener = %label, postgres = %target, %reason, retry_in_ms = backoff.as_millis() as u64, "PostgreSQL listener disconnected");
                }
                Ended::Listened(reason) => {
                    backoff = BACKOFF_MIN;
                    metrics::counter!("riskhost_db_listen_reconnects_total", "listener" => label.clone())
                        .increment(1);
                    metrics::gauge!("riskhost_db_listen_connected", "listener" => label.clone())
                        .set(0.0);
                    tracing::warn!(listener = %label, postgres = %target, %reason, "PostgreSQL listener lost its connection; reconnecting");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = tx.closed() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    });
    Ok(rx)
}

enum Ended {
    /// The consumer is gone: stop.
    ReceiverGone,
    /// The connection failed before it listened.
    Lost(String),
    /// The connection listened, then broke.
    Listened(String),
}

async fn listen_once(
    config: &tokio_postgres::Config,
    channels: &[String],
    tx: &mpsc::Sender<Notice>,
) -> Ended {
    let (client, mut connection) = match config.connect(NoTls).await {
        Ok(pair) => pair,
        Err(e) => return Ended::Lost(error_text(&e)),
    };
    // The connection is driven here; notifications arrive through it.
    let (notices_tx, mut notices) = mpsc::unbounded_channel::<Result<Notice, String>>();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            let forwarded = match message {
                Ok(AsyncMessage::Notification(n)) => notices_tx.send(Ok(Notice::Notify {
                    channel: n.channel().to_owned(),
                    payload: n.payload().to_owned(),
                })),
                Ok(_) => Ok(()),
                Err(e) => {
                    let _ = notices_tx.send(Err(error_text(&e)));
                    return;
                }
            };
            if forwarded.is_err() {
                return;
            }
        }
        let _ = notices_tx.send(Err("the server closed the connection".into()));
    });
    let _stop_driver = AbortOnDrop(driver);
    let statements: String = channels
        .iter()
        .map(|c| format!("LISTEN \"{}\";", c.replace('"', "\"\"")))
        .collect();
    if let Err(e) = client.batch_execute(&statements).await {
        return Ended::Lost(error_text(&e));
    }
    metrics::gauge!("riskhost_db_listen_connected", "listener" => config.get_application_name().unwrap_or("").to_owned())
        .set(1.0);
    if tx.send(Notice::Resync).await.is_err() {
        return Ended::ReceiverGone;
    }
    loop {
        tokio::select! {
            notice = notices.recv() => match notice {
                Some(Ok(notice)) => {
                    if tx.send(notice).await.is_err() {
                        return Ended::ReceiverGone;
                    }
                }
                Some(Err(reason)) => return Ended::Listened(reason),
                None => return Ended::Listened("the connection ended".into()),
            },
            _ = tx.closed() => return Ended::ReceiverGone,
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
