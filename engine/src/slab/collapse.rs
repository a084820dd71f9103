//! Huge pages for full regions, made off the writer's thread.
//!
//! A region fills in small pages, so the one a slab is still filling costs only the pages
//! its chunks touched: a huge page is resident whole from its first touch, which made the
//! newest region cost up to 2 MiB for a few chunks (up to 2 bytes an entry at a million,
//! BENCHMARKS.md). Once every chunk of a region is taken, the region is handed here, and
//! one thread of the process asks Linux to copy it into a huge page (`MADV_COLLAPSE`,
//! Linux 6.1), so that lookups into it need one TLB entry rather than 512. The copy takes
//! about a millisecond; made on the writer's thread it would pause one write in every
//! few thousand for that long (the writer also serves its core's requests). Made here, an
//! access to that one region during the copy waits for it, and other cores see a TLB
//! flush (BENCHMARKS.md, "A collapse off the writer's thread, probed").
//!
//! The thread is the process's, started by the first request and parked on its queue
//! between them, as an allocator's background thread is: one for every slab, since
//! collapses are rare (one per 2 MiB of nodes written into fresh memory). A request keeps
//! only a weak reference to its arena's reservation, so a slab that is dropped is never
//! kept alive by its queue, and a reservation that is gone is never advised. A failed
//! collapse (no huge page free, THP disabled, an older kernel) leaves the region in small
//! pages, advised for khugepaged to collapse when it can. The advice never changes what the
//! memory holds, so a region that was given back and mapped again before its request was
//! served (it would need all its chunks freed in between) is at worst made huge early.

use std::sync::mpsc::{self, Sender};
use std::sync::{OnceLock, Weak};

use super::arena::Reservation;

/// A full region: its reservation, and its offset in it.
pub(super) struct Request {
    pub reservation: Weak<Reservation>,
    pub offset: usize,
}

/// The queue of the thread that collapses; `None` if the thread could not be started.
static QUEUE: OnceLock<Option<Sender<Request>>> = OnceLock::new();

/// Hands a full region to the collapsing thread, starting it on first use. If it cannot
/// be started, the region is only advised (khugepaged may collapse it).
pub(super) fn request(request: Request) {
    let queue = QUEUE.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("huge-pages".into())
            .spawn(move || {
                for request in receiver {
                    if let Some(reservation) = request.reservation.upgrade() {
                        reservation.collapse(request.offset);
                    }
                }
            })
            .ok()
            .map(|_| sender)
    });
    let unsent = match queue {
        Some(sender) => sender.send(request).err().map(|e| e.0),
        None => Some(request),
    };
    if let Some(request) = unsent {
        if let Some(reservation) = request.reservation.upgrade() {
            reservation.advise_huge(request.offset);
        }
    }
}
