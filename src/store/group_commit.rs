//! The webhook intake's group commit, on both databases: a webhook queues its events and waits
//! for its turn to write; the webhooks that arrived while the previous commit was being made are
//! then written together, in one transaction and one commit for all. If one webhook's write
//! fails, the group is rolled back and each webhook is written again alone, so only that one is
//! refused. Each is answered only after the commit: 202 still means committed.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::events::Item;
use super::*;

/// A webhook's events waiting to be committed, and where its answer goes once they are.
pub(super) struct Waiting {
    items: Vec<(Event, Effect)>,
    now: Millis,
    answer: tokio::sync::oneshot::Sender<StoreResult<Vec<Acceptance>>>,
}

/// Writes a group of webhooks in one transaction: every webhook's answers, or the first error
/// (nothing written). What differs per database (`SqliteDb`, `PostgresDb`).
pub(super) trait GroupWriter: Send + Sync + 'static {
    fn write<'a>(&'a self, batch: &'a [Item<'a>]) -> BoxFuture<'a, StoreResult<Vec<Acceptance>>>;
}

/// The queue and the turn the webhooks of one process take.
pub(super) struct GroupCommit {
    /// Held while a group is written (SQLite shares it with every write transaction).
    turn: Arc<tokio::sync::Mutex<()>>,
    queue: std::sync::Mutex<Vec<Waiting>>,
}

impl GroupCommit {
    pub(super) fn new(turn: Arc<tokio::sync::Mutex<()>>) -> Self {
        Self {
            turn,
            queue: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// How many webhooks wait for the next commit.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.queue.lock().expect("lock").len()
    }

    /// Commits the events of one webhook, with whatever others queued meanwhile.
    pub(super) async fn accept<W: GroupWriter>(
        &self,
        writer: Arc<W>,
        items: &[(Event, Effect)],
        now: Millis,
    ) -> StoreResult<Vec<Acceptance>> {
        if crate::lease::current().is_some() {
            // Work done under a lease (a directory poll) is fenced by the lease of the task that
            // writes it (`PostgresDb::begin`): it is written alone, in this task, never in a
            // group another task commits.
            let _turn = self.turn.lock().await;
            let batch: Vec<Item> = items
                .iter()
                .map(|(event, effect)| Item { event, effect, now })
                .collect();
            return writer.write(&batch).await;
        }
        let (answer, mut answered) = tokio::sync::oneshot::channel();
        self.queue.lock().expect("lock").push(Waiting {
            items: items.to_vec(),
            now,
            answer,
        });
        // Answered by another webhook's commit, it stops waiting for the turn at once: queued for
        // the turn, each of a group's webhooks would otherwise take it and hand it on in line,
        // one task wake-up after the other, before the next group could start (with 64 senders
        // on 2 cores, that hand-on outlasted the commit).
        let acquire = self.turn.clone().lock_owned();
        tokio::pin!(acquire);
        let turn = tokio::select! {
            biased;
            done = &mut answered => return abandoned_if_dropped(done),
            turn = &mut acquire => turn,
        };
        if let Ok(done) = answered.try_recv() {
            // The turn before this one committed it with its own.
            return done;
        }
        let group = std::mem::take(&mut *self.queue.lock().expect("lock"));
        // The commit runs in a task of its own, holding the turn: if this webhook's request is
        // dropped (its client went away), the others in the group are still committed and
        // answered.
        let commit = tokio::spawn(async move {
            commit_group(writer.as_ref(), group).await;
            drop(turn);
        });
        if let Err(e) = commit.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
        abandoned_if_dropped(answered.await)
    }
}

/// A webhook's answer; its sender dropped unsent means the commit was abandoned (not written).
fn abandoned_if_dropped(
    answer: Result<StoreResult<Vec<Acceptance>>, tokio::sync::oneshot::error::RecvError>,
) -> StoreResult<Vec<Acceptance>> {
    answer.unwrap_or_else(|_| Err(StoreError::Corrupt("a webhook's commit was abandoned".into())))
}

/// Commits the queued webhooks in one transaction and answers each; after a failure, each alone.
async fn commit_group<W: GroupWriter>(writer: &W, group: Vec<Waiting>) {
    let results = match write_group(writer, &group).await {
        Ok(results) => results.into_iter().map(Ok).collect(),
        Err(_) if group.len() > 1 => {
            let mut results = Vec::with_capacity(group.len());
            for w in &group {
                results.push(
                    write_group(writer, std::slice::from_ref(w))
                        .await
                        .map(|mut r| r.pop().expect("one webhook, one answer")),
                );
            }
            results
        }
        Err(e) => vec![Err(e)],
    };
    for (w, result) in group.into_iter().zip(results) {
        let _ = w.answer.send(result);
    }
}

/// The webhooks' events as one batch: each webhook's answers, in order.
async fn write_group<W: GroupWriter>(writer: &W, group: &[Waiting]) -> StoreResult<Vec<Vec<Acceptance>>> {
    let batch: Vec<Item> = group
        .iter()
        .flat_map(|w| {
            w.items.iter().map(|(event, effect)| Item {
                event,
                effect,
                now: w.now,
            })
        })
        .collect();
    let mut answers = writer.write(&batch).await?.into_iter();
    Ok(group
        .iter()
        .map(|w| answers.by_ref().take(w.items.len()).collect())
        .collect())
}
