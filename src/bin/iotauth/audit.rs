//! `iotauth audit verify` and `iotauth events`: the store's lifecycle event log.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use std::cmp::Ordering;

use iotauth::store::{
    ChainBreak, ChainHead, EventLog, EventRecord, FailureKind, MAX_EVENTS_PER_READ, Store,
    StoreError, verify_chain,
};
use iotauth::{DeviceName, ProductKey};
use serde::Serialize;

use crate::{Failure, print_json};

/// How often `events --follow` reads the log when the store sends no notifications.
const FOLLOW_POLL: Duration = Duration::from_millis(50);

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Walk the event log's hash chain from the first event to the store's head; exit 1 naming
    /// the first broken link (an edited, deleted or reordered event).
    Verify,
}

#[derive(Args)]
pub(crate) struct Events {
    /// Only events numbered after SEQ.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    since: u64,
    /// Keep printing events as they are appended, until interrupted.
    #[arg(long)]
    follow: bool,
    /// Only the events of this product (and of its devices).
    #[arg(long, value_name = "PK")]
    product: Option<ProductKey>,
    /// Only the events of devices with this name.
    #[arg(long, value_name = "DN")]
    device: Option<DeviceName>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChainJson {
    valid: bool,
    events: u64,
    head_hash: String,
}

pub(crate) async fn audit(store: Arc<dyn Store>, command: AuditCommand) -> Result<(), Failure> {
    match command {
        AuditCommand::Verify => verify(&*store).await,
    }
}

/// The chain's verdict: broken (what a verification found), or not read (an outage).
fn unreadable(e: &StoreError) -> Failure {
    let cause = iotauth::ErrorChain(e);
    if e.failure_kind() == Some(FailureKind::Corrupt) {
        broken(cause)
    } else {
        Failure::rejected(format!("cannot read the event log: {cause}"))
    }
}

fn broken(cause: impl std::fmt::Display) -> Failure {
    Failure::rejected(format!("the event log is broken: {cause}"))
}

async fn verify(store: &dyn Store) -> Result<(), Failure> {
    let mut walked = ChainHead::EMPTY;
    loop {
        // Every event there is, then the head. The head never goes back, so unless it was
        // edited it is at the last event read, or after it when events were appended meanwhile.
        let before = walked.seq;
        walked = walk(store, walked).await?;
        let head = store.event_head().await.map_err(|e| unreadable(&e))?;
        let chain_break = match head.seq.cmp(&walked.seq) {
            Ordering::Equal if head.hash == walked.hash => break,
            Ordering::Equal => ChainBreak::HeadMismatch { seq: head.seq },
            Ordering::Less => ChainBreak::BeyondHead {
                last: walked.seq,
                head: head.seq,
            },
            Ordering::Greater if walked.seq > before => continue,
            Ordering::Greater => ChainBreak::Truncated {
                last: walked.seq,
                head: head.seq,
            },
        };
        return Err(broken(chain_break));
    }
    print_json(&ChainJson {
        valid: true,
        events: walked.seq,
        head_hash: walked.hash.to_hex(),
    })
}

/// The events after `after`, at most a page: all of them, or, when one of the page does not
/// parse, those before it (read one at a time) and the error.
async fn page_after(store: &dyn Store, after: u64) -> (Vec<EventRecord>, Option<StoreError>) {
    match store.events_after(after, MAX_EVENTS_PER_READ).await {
        Ok(events) => (events, None),
        Err(e) if e.failure_kind() == Some(FailureKind::Corrupt) => {
            let mut readable = Vec::new();
            let mut last = after;
            loop {
                match store.events_after(last, 1).await {
                    Ok(one) if one.is_empty() => return (readable, None),
                    Ok(one) => {
                        last = one[0].seq;
                        readable.extend(one);
                    }
                    Err(e) => return (readable, Some(e)),
                }
            }
        }
        Err(e) => (Vec::new(), Some(e)),
    }
}

/// Verifies every event after `from` to the end of the log; where it ends.
async fn walk(store: &dyn Store, from: ChainHead) -> Result<ChainHead, Failure> {
    let mut head = from;
    loop {
        let (events, failed) = page_after(store, head.seq).await;
        // An earlier broken link is the one named, before a row that does not parse.
        head = verify_chain(head, &events).map_err(broken)?;
        if let Some(e) = failed {
            return Err(unreadable(&e));
        }
        if events.is_empty() {
            return Ok(head);
        }
    }
}

pub(crate) async fn events(store: Arc<dyn Store>, args: Events) -> Result<(), Failure> {
    let mut after = args.since;
    let stdout = std::io::stdout();
    loop {
        // What is readable is printed before a row that does not parse is reported.
        let (events, failed) = page_after(&*store, after).await;
        for event in &events {
            after = event.seq;
            if args.product.is_some_and(|pk| pk != event.product_key)
                || args.device.is_some() && args.device != event.device_name
            {
                continue;
            }
            let line = serde_json::to_string(event)?;
            // A closed pipe (`| head`) ends the command quietly.
            if writeln!(stdout.lock(), "{line}").is_err() {
                return Ok(());
            }
        }
        if let Some(e) = failed {
            return Err(unreadable(&e));
        }
        if events.len() == MAX_EVENTS_PER_READ {
            continue;
        }
        if !args.follow {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_POLL) => {}
            true = store.appended() => {}
        }
    }
}
