//! `GET /v1/jobs/{id}/events`: Server-Sent Events. Stored events after `Last-Event-ID` are
//! replayed, then live ones follow; the stream ends after the job's final event, when the
//! client goes away, or when the server shuts down.

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::jobs::FINAL_EVENTS;
use crate::store;

use super::error::ApiError;
use super::jobs::parse_id;
use super::{AppState, KEEP_ALIVE};

fn sse(id: i64, kind: &str, data: &str) -> Event {
    Event::default().id(id.to_string()).event(kind).data(data)
}

/// GET /v1/jobs/{id}/events
pub async fn job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = parse_id(&id)?;
    let pool = state.shared.pool.clone();
    store::jobs::get(&pool, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
    let after: i64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Subscribe before reading the history so nothing falls in between.
    let mut live = state.shared.events.subscribe();
    let replay = store::events::since(&pool, &id, after).await?;
    let mut shutdown = state.shutdown.clone();
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let mut last = after;
        for ev in replay {
            last = ev.id;
            if tx.send(Ok(sse(ev.id, &ev.kind, &ev.data))).await.is_err()
                || FINAL_EVENTS.contains(&ev.kind.as_str())
            {
                return;
            }
        }
        // A job that ended before this stream (its final event earlier than Last-Event-ID).
        if let Ok(Some(job)) = store::jobs::get(&pool, &id).await
            && job.status.is_finished()
        {
            return;
        }
        loop {
            tokio::select! {
                r = live.recv() => match r {
                    Ok(ev) if ev.job_id == id && ev.id > last => {
                        last = ev.id;
                        if tx.send(Ok(sse(ev.id, &ev.kind, &ev.data.to_string()))).await.is_err() || FINAL_EVENTS.contains(&ev.kind.as_str()) {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        // Too slow for the broadcast: catch up from the store.
                        let Ok(missed) = store::events::since(&pool, &id, last).await else { return };
                        for ev in missed {
                            last = ev.id;
                            if tx.send(Ok(sse(ev.id, &ev.kind, &ev.data))).await.is_err() || FINAL_EVENTS.contains(&ev.kind.as_str()) {
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
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
