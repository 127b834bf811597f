//! `PAYLOAD_MEMORY_BYTES` (§12.4): the bytes of fetched payload bodies a
//! process holds at once. A record reserves its object's size once S3 has
//! said it and before the bytes are read (its head's, then, once admitted,
//! its whole body's; twice the size, for the text and the body parsed from
//! it), and keeps the reservation until its work is done;
//! others wait for room. A body larger than the whole
//! budget waits for all of it, and so goes alone.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Counted in KiB, so that any budget fits the semaphore's `u32` requests.
const UNIT: usize = 1024;

#[derive(Debug)]
pub struct MemoryBudget {
    room: Arc<Semaphore>,
    units: u32,
}

/// Room held for one body; given back when dropped.
#[derive(Debug)]
pub struct Reserved(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl MemoryBudget {
    pub fn new(bytes: usize) -> MemoryBudget {
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .max(1);
        MemoryBudget {
            room: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// Room for nothing (an empty payload).
    pub fn nothing(&self) -> Reserved {
        Reserved(None)
    }

    /// Waits until there is room for `bytes` (all of the budget for a body
    /// larger than it), or until `until`: `None` when there was none in
    /// time.
    pub async fn reserve(&self, bytes: usize, until: tokio::time::Instant) -> Option<Reserved> {
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.units);
        let room = Arc::clone(&self.room).acquire_many_owned(units);
        match tokio::time::timeout_at(until, room).await {
            Ok(Ok(permit)) => Some(Reserved(Some(permit))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(1)
    }

    #[tokio::test(start_paused = true)]
    async fn bodies_wait_for_room_and_a_large_one_goes_alone() {
        let budget = MemoryBudget::new(1024 * 1024);
        let a = budget.reserve(600 * 1024, soon()).await.expect("room");
        assert!(
            budget.reserve(600 * 1024, soon()).await.is_none(),
            "no room for a second 600 KiB beside the first"
        );
        let small = budget
            .reserve(300 * 1024, soon())
            .await
            .expect("300 KiB fits");
        drop((a, small));
        let huge = budget
            .reserve(5 * 1024 * 1024, soon())
            .await
            .expect("alone");
        assert!(
            budget.reserve(1, soon()).await.is_none(),
            "nothing beside it"
        );
        drop(huge);
        assert!(budget.reserve(1024 * 1024, soon()).await.is_some());
    }
}
