//! Settling one consumer channel's deliveries with as few frames as the broker allows.
//!
//! Delivery tags on a channel count up from 1. An ack whose every earlier delivery is already
//! settled goes out at once, as one `basic.ack` with `multiple` set that also covers the acks
//! that were waiting behind it. An ack that comes while an earlier delivery is still being
//! worked on waits for it, but not for long: once a quarter of the prefetch window waits,
//! or [`WAITING_ACKS_FLUSH`] after an ack started waiting ([`Settlements::flush_waiting`]), or
//! when the consumer stops, the waiting acks go out one by one. Nacks (requeue, reject) go out at
//! once and count as settled for the acks behind them. The egress consumers
//! ([`super::subscription`]) and the partition router ([`super::router`]) settle this way.
//!
//! Why: for a quorum queue every ack frame is an entry in the queue's log; fewer frames cost the
//! broker less CPU per message (README "Performance"). Frames are queued for lapin's I/O thread
//! and not waited for ([`queue_frame`]); they are queued under one lock, so a `multiple` ack
//! never reaches the broker before an earlier frame that it would otherwise overtake.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::Duration,
};

use futures_util::FutureExt;
use lapin::{
    options::{BasicAckOptions, BasicNackOptions},
    types::DeliveryTag,
    Channel,
};
use tokio::sync::Notify;

use crate::bus::delivery::SettleError;

/// How long an ack may wait behind an earlier delivery still in progress before it is sent
/// alone; a waiting ack holds its place in the prefetch window.
pub(super) const WAITING_ACKS_FLUSH: Duration = Duration::from_millis(50);

/// The settlements of one consumer channel.
pub(super) struct Settlements {
    channel: Channel,
    window: Mutex<Window>,
    wait_limit: AtomicUsize,
    /// Signalled when an ack starts waiting: starts [`Self::flush_waiting`]'s timer.
    ack_waits: Notify,
}

impl Settlements {
    /// The settlements of `channel`, whose consumer has `prefetch` deliveries at most. Up to a
    /// quarter of them may be acks waiting behind an unsettled delivery (holding their places
    /// in the prefetch window meanwhile) before those go out one by one.
    pub(super) fn new(channel: Channel, prefetch: u16) -> Self {
        Self {
            channel,
            window: Mutex::default(),
            wait_limit: AtomicUsize::new((usize::from(prefetch) / 4).max(1)),
            ack_waits: Notify::new(),
        }
    }

    /// From now on no ack waits (the consumer stopped: nothing calls [`Self::flush`] any more),
    /// and the waiting ones go out.
    pub(super) fn stop_waiting(&self) -> Result<(), SettleError> {
        self.wait_limit.store(1, Ordering::Relaxed);
        self.flush()
    }

    pub(super) fn ack(&self, tag: DeliveryTag) -> Result<(), SettleError> {
        let mut window = self.window.lock().expect("poisoned");
        match window.ack(tag) {
            Some(through) => self.send_ack(through, true),
            None if window.waiting() >= self.wait_limit.load(Ordering::Relaxed) => {
                self.send_waiting(&mut window)
            }
            None => {
                self.ack_waits.notify_one();
                Ok(())
            }
        }
    }

    /// Sends the waiting acks alone [`WAITING_ACKS_FLUSH`] after one starts waiting, for as
    /// long as it is polled: the consumer polls it beside its loop (it never ends by itself), so
    /// an idle consumer has no timer running. `queue` names the consumer's queue in warnings.
    pub(super) async fn flush_waiting(&self, queue: &str) {
        loop {
            self.ack_waits.notified().await;
            tokio::time::sleep(WAITING_ACKS_FLUSH).await;
            if let Err(error) = self.flush() {
                tracing::warn!(%error, queue, "waiting acks not sent; the broker delivers those messages again");
            }
        }
    }

    pub(super) fn nack(&self, tag: DeliveryTag, requeue: bool) -> Result<(), SettleError> {
        let mut window = self.window.lock().expect("poisoned");
        if window.is_settled(tag) {
            return Ok(());
        }
        let options = BasicNackOptions {
            requeue,
            multiple: false,
        };
        queue_frame(self.channel.basic_nack(tag, options))?;
        match window.settled_elsewhere(tag) {
            Some(through) => self.send_ack(through, true),
            None => Ok(()),
        }
    }

    /// Sends every waiting ack now.
    pub(super) fn flush(&self) -> Result<(), SettleError> {
        let mut window = self.window.lock().expect("poisoned");
        self.send_waiting(&mut window)
    }

    fn send_waiting(&self, window: &mut Window) -> Result<(), SettleError> {
        for tag in window.take_waiting() {
            self.send_ack(tag, false)?;
        }
        Ok(())
    }

    fn send_ack(&self, tag: DeliveryTag, multiple: bool) -> Result<(), SettleError> {
        queue_frame(self.channel.basic_ack(tag, BasicAckOptions { multiple }))
    }
}

/// Runs a lapin settlement up to the point where its frame is queued for the I/O thread (lapin
/// queues it on the first poll, then waits for the write) and leaves the write to that thread.
/// Waiting for the write would cost two thread hand-offs per message and tell nothing the broker
/// does not: a settlement that never reaches it leaves the message unsettled, and the broker
/// delivers it again when the channel closes, as after an awaited ack that failed. A closed
/// channel refuses at once.
fn queue_frame(settle: impl Future<Output = lapin::Result<()>>) -> Result<(), SettleError> {
    match settle.now_or_never() {
        Some(Err(error)) => Err(SettleError::Broker(error.to_string())),
        Some(Ok(())) | None => Ok(()),
    }
}

/// Which deliveries of a channel are settled, as far as the broker must hear.
#[derive(Default, Debug)]
struct Window {
    /// Every delivery up to this tag is settled on the wire, or covered by an ack on the wire.
    through: DeliveryTag,
    /// Deliveries above `through` that are settled: `true` once on the wire (a nack, or an ack
    /// sent alone), `false` for an ack still waiting.
    above: BTreeMap<DeliveryTag, bool>,
}

impl Window {
    /// Records an ack. Returns the tag to ack with `multiple` now (this one, or the last of the
    /// waiting acks it lets through), or `None` when it waits for an earlier delivery.
    fn ack(&mut self, tag: DeliveryTag) -> Option<DeliveryTag> {
        if self.is_settled(tag) {
            return None;
        }
        if tag != self.through + 1 {
            self.above.insert(tag, false);
            return None;
        }
        self.through = tag;
        Some(self.advance().unwrap_or(tag))
    }

    /// Records a delivery settled on the wire by other means (a nack). Returns the tag to ack
    /// with `multiple` when that lets waiting acks through.
    fn settled_elsewhere(&mut self, tag: DeliveryTag) -> Option<DeliveryTag> {
        if tag != self.through + 1 {
            self.above.insert(tag, true);
            return None;
        }
        self.through = tag;
        self.advance()
    }

    /// Moves `through` over the settled deliveries that follow it; returns the last waiting ack
    /// passed (an ack with `multiple` up to it settles every waiting one passed).
    fn advance(&mut self) -> Option<DeliveryTag> {
        let mut last_waiting = None;
        while let Some(on_wire) = self.above.remove(&(self.through + 1)) {
            self.through += 1;
            if !on_wire {
                last_waiting = Some(self.through);
            }
        }
        last_waiting
    }

    /// Settled before: a second settlement of one delivery would be refused by the broker (and
    /// close the channel), so it is dropped.
    fn is_settled(&self, tag: DeliveryTag) -> bool {
        tag <= self.through || self.above.contains_key(&tag)
    }

    fn waiting(&self) -> usize {
        self.above.values().filter(|on_wire| !**on_wire).count()
    }

    /// The waiting acks, now counted as on the wire (the caller sends each alone).
    fn take_waiting(&mut self) -> Vec<DeliveryTag> {
        self.above
            .iter_mut()
            .filter(|(_, on_wire)| !**on_wire)
            .map(|(tag, on_wire)| {
                *on_wire = true;
                *tag
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_in_order_go_out_at_once() {
        let mut window = Window::default();
        assert_eq!(window.ack(1), Some(1));
        assert_eq!(window.ack(2), Some(2));
        assert_eq!(window.waiting(), 0);
    }

    #[test]
    fn acks_behind_an_unsettled_delivery_wait_and_go_out_with_it() {
        let mut window = Window::default();
        assert_eq!(window.ack(2), None);
        assert_eq!(window.ack(3), None);
        assert_eq!(window.ack(5), None);
        assert_eq!(window.waiting(), 3);
        // 1 lets 2 and 3 through; 5 still waits for 4.
        assert_eq!(window.ack(1), Some(3));
        assert_eq!(window.waiting(), 1);
        assert_eq!(window.ack(4), Some(5));
        assert_eq!(window.waiting(), 0);
        assert_eq!(window.through, 5);
    }

    #[test]
    fn a_multiple_ack_never_names_a_delivery_already_acked_alone() {
        let mut window = Window::default();
        window.ack(2);
        window.ack(3);
        assert_eq!(window.take_waiting(), vec![2, 3]);
        // 2 and 3 are on the wire; acking 1 must not name 3 (the broker no longer holds it).
        assert_eq!(window.ack(1), Some(1));
        assert_eq!(window.through, 3);
        window.ack(5);
        assert_eq!(window.take_waiting(), vec![5]);
        window.ack(6);
        // 4 passes 5 (on the wire) and 6 (waiting): one ack with multiple up to 6.
        assert_eq!(window.ack(4), Some(6));
    }

    #[test]
    fn a_nack_lets_the_acks_behind_it_through() {
        let mut window = Window::default();
        assert_eq!(window.ack(2), None);
        assert_eq!(window.ack(3), None);
        assert_eq!(window.settled_elsewhere(1), Some(3));
        // A nack with nothing waiting behind it needs no ack.
        assert_eq!(window.settled_elsewhere(4), None);
        // A nack above a gap waits as settled, and is not acked when the gap closes.
        assert_eq!(window.settled_elsewhere(6), None);
        assert_eq!(window.waiting(), 0);
        assert_eq!(window.ack(5), Some(5));
        assert_eq!(window.through, 6);
    }

    #[test]
    fn a_second_ack_of_one_delivery_is_dropped() {
        let mut window = Window::default();
        assert_eq!(window.ack(1), Some(1));
        assert_eq!(window.ack(1), None);
        assert_eq!(window.ack(3), None);
        assert_eq!(window.ack(3), None);
        assert_eq!(window.take_waiting(), vec![3]);
        assert_eq!(window.ack(3), None);
        assert_eq!(window.waiting(), 0);
    }

    #[test]
    fn taking_the_waiting_acks_leaves_nothing_waiting() {
        let mut window = Window::default();
        window.ack(3);
        window.settled_elsewhere(4);
        window.ack(5);
        assert_eq!(window.take_waiting(), vec![3, 5]);
        assert_eq!(window.waiting(), 0);
        assert!(window.take_waiting().is_empty());
    }
}
