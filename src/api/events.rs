//! Server-Sent Events of a job (`GET /v1/jobs/{id}/events`) or a study
//! (`GET /v1/studies/{id}/events`). Stored events after `Last-Event-ID` are replayed, then
//! live ones follow; the stream ends after the final event, when the client goes away, or
//! when the server shuts down.

use std::convert::Infallible;

use crate::store::Pool;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::jobs::{FINAL_EVENTS, JobEvent, StudyEvent};
use crate::store::{self, StoreError};

use super::error::ApiError;
use super::jobs::parse_id;
use super::{AppState, KEEP_ALIVE};

fn sse(id: i64, kind: &str, data: &str) -> Event {
    Event::default().id(id.to_string()).event(kind).data(data)
}

/// Whose events a stream carries.
#[derive(Clone)]
enum Feed {
    Job(String),
    Study(String),
}

/// The live side of a [`Feed`].
enum Live {
    Job(broadcast::Receiver<JobEvent>),
    Study(broadcast::Receiver<StudyEvent>),
}

/// (event id, kind, data) of a stored or live event.
type Item = (i64, String, String);

impl Feed {
    async fn since(&self, pool: &Pool, after: i64) -> Result<Vec<Item>, StoreError> {
        Ok(match self {
            Feed::Job(id) => store::events::since(pool, id, after)
                .await?
                .into_iter()
                .map(|e| (e.id, e.kind, e.data))
                .collect(),
            Feed::Study(id) => store::studies::events_since(pool, id, after)
                .await?
                .into_iter()
                .map(|e| (e.id, e.kind, e.data))
                .collect(),
        })
    }

    /// Whether the job or study has ended (its final event may be older than Last-Event-ID).
    async fn ended(&self, pool: &Pool) -> bool {
        match self {
            Feed::Job(id) => {
                matches!(store::jobs::get(pool, id).await, Ok(Some(j)) if j.status.is_finished())
            }
            Feed::Study(id) => {
                matches!(store::studies::get(pool, id).await, Ok(Some(s)) if s.status.is_finished())
            }
        }
    }
}

impl Live {
    /// The next live event of `feed` (others are skipped).
    async fn next(&mut self, feed: &Feed) -> Result<Item, RecvError> {
        loop {
            let found = match (&mut *self, feed) {
                (Live::Job(rx), Feed::Job(want)) => {
                    let ev = rx.recv().await?;
                    (ev.job_id == *want).then(|| (ev.id, ev.kind, ev.data.to_string()))
                }
                (Live::Study(rx), Feed::Study(want)) => {
                    let ev = rx.recv().await?;
                    (ev.study_id == *want).then(|| (ev.id, ev.kind, ev.data.to_string()))
                }
                _ => return Err(RecvError::Closed),
            };
            if let Some(item) = found {
                return Ok(item);
            }
        }
    }
}

fn last_event_id(headers: &HeaderMap) -> i64 {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The stream of `feed` after `after`; `live` subscribed before anything was read.
fn stream(
    state: &AppState,
    feed: Feed,
    mut live: Live,
    after: i64,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<>> {
    let pool = state.shared.pool.clone();
    let poll_every = state.shared.event_poll;
    let mut shutdown = state.shutdown.clone();
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let mut last = after;
        let send = |tx: &mpsc::Sender<_>, (id, kind, data): Item| {
            let tx = tx.clone();
            async move {
                let fin = FINAL_EVENTS.contains(&kind.as_str());
                tx.send(Ok(sse(id, &kind, &data))).await.is_err() || fin
            }
        };
        let Ok(replay) = feed.since(&pool, after).await else {
            return;
        };
        for ev in replay {
            last = ev.0;
            if send(&tx, ev).await {
                return;
            }
        }
        if feed.ended(&pool).await {
            return;
        }
        // Events written by other processes (workers on other machines) reach this one through
        // the store: poll it as well as the in-process broadcast.
        let mut poll = tokio::time::interval(poll_every);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    let Ok(missed) = feed.since(&pool, last).await else { continue };
                    for ev in missed {
                        last = ev.0;
                        if send(&tx, ev).await {
                            return;
                        }
                    }
                }
                r = live.next(&feed) => match r {
                    Ok(ev) if ev.0 > last => {
                        last = ev.0;
                        if send(&tx, ev).await {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        // Too slow for the broadcast: catch up from the store.
                        let Ok(missed) = feed.since(&pool, last).await else { return };
                        for ev in missed {
                            last = ev.0;
                            if send(&tx, ev).await {
                                return;
                            }
                        }
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// GET /v1/jobs/{id}/events
pub async fn job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = parse_id(&id)?;
    store::jobs::get(&state.shared.pool, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
    // Subscribe before reading the history so nothing falls in between.
    let live = Live::Job(state.shared.events.subscribe());
    Ok(stream(&state, Feed::Job(id), live, last_event_id(&headers)))
}

/// GET /v1/studies/{id}/events
pub async fn study_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = uuid::Uuid::parse_str(&id)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::NotFound(format!("study {id:?}")))?;
    store::studies::get(&state.shared.pool, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("study {id}")))?;
    let live = Live::Study(state.shared.study_events.subscribe());
    Ok(stream(
        &state,
        Feed::Study(id),
        live,
        last_event_id(&headers),
    ))
}
