//! `iotauth audit verify` and `iotauth events`: the store's lifecycle event log.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use iotauth::store::{ChainHead, EventLog, MAX_EVENTS_PER_READ, Store, verify_chain};
use iotauth::{DeviceName, ProductKey};
use serde::Serialize;

use crate::{Failure, print_json};

/// How often `events --follow` reads the log when the store sends no notifications.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

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

async fn verify(store: &dyn Store) -> Result<(), Failure> {
    let broken = |cause: String| Failure::Rejected(format!("the event log is broken: {cause}"));
    // Read first: events appended while the log is walked end beyond it, not before it.
    let recorded = store.event_head().await?;
    let mut head = ChainHead::EMPTY;
    loop {
        let events = store
            .events_after(head.seq, MAX_EVENTS_PER_READ)
            .await
            .map_err(|e| broken(iotauth::ErrorChain(&e).to_string()))?;
        let Some(last) = events.last() else { break };
        if last.seq > recorded.seq {
            let within: Vec<_> = events.iter().filter(|e| e.seq <= recorded.seq).collect();
            head = verify_chain(head, within).map_err(|e| broken(e.to_string()))?;
            break;
        }
        head = verify_chain(head, &events).map_err(|e| broken(e.to_string()))?;
    }
    if head != recorded {
        return Err(broken(
            iotauth::store::ChainBreak::Truncated {
                last: head.seq,
                head: recorded.seq,
            }
            .to_string(),
        ));
    }
    print_json(&ChainJson {
        valid: true,
        events: head.seq,
        head_hash: head.hash.to_hex(),
    })
}

pub(crate) async fn events(store: Arc<dyn Store>, args: Events) -> Result<(), Failure> {
    let mut after = args.since;
    let stdout = std::io::stdout();
    loop {
        let events = store.events_after(after, MAX_EVENTS_PER_READ).await?;
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
