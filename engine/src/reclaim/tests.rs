//! The reclaimer on its own, with nodes that count their frees. Records are shared by
//! every test thread of the process, so a read another test is making may hold a batch
//! back for a moment: the tests assert what must stay held exactly, and wait for what
//! must be freed by sealing more batches until it is.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::Arc;

use super::{Reclaimer, Retirable, BATCH, BULK_BATCH};
use crate::sync::AtomicU32;

struct Counted {
    freed: Arc<AtomicUsize>,
    /// Zeroed as it is freed: a reader that saw it zeroed read a freed node.
    canary: AtomicU64,
}

const ALIVE: u64 = 0x5eed_5eed_5eed_5eed;

impl Retirable for Counted {}

/// What the tests' writer frees with: the reclaimer hands each node back once, and
/// they were made by `Box::new`.
fn free(ptr: *mut Counted) {
    // SAFETY: as above.
    let node = unsafe { Box::from_raw(ptr) };
    node.canary.store(0, SeqCst);
    node.freed.fetch_add(1, SeqCst);
}

fn node(freed: &Arc<AtomicUsize>) -> *mut Counted {
    Box::into_raw(Box::new(Counted {
        freed: freed.clone(),
        canary: AtomicU64::new(ALIVE),
    }))
}

/// Retires one batch of fresh nodes.
fn retire_batch(reclaimer: &Reclaimer<Counted>, freed: &Arc<AtomicUsize>) {
    for _ in 0..BATCH {
        // SAFETY: this test is the reclaimer's only writer; the node is nobody's.
        unsafe { reclaimer.retire(node(freed), free) };
    }
}

/// Seals batches until at least `want` nodes were freed; how many batches that took.
fn seal_until_freed(
    reclaimer: &Reclaimer<Counted>,
    freed: &Arc<AtomicUsize>,
    want: usize,
) -> usize {
    for batches in 0..10_000 {
        if freed.load(SeqCst) >= want {
            return batches;
        }
        retire_batch(reclaimer, freed);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("only {} of {want} nodes freed", freed.load(SeqCst));
}

#[test]
fn a_batch_sealed_during_a_read_waits_for_that_read_to_end() {
    let reclaimer = Arc::new(Reclaimer::<Counted>::new());
    let freed = Arc::new(AtomicUsize::new(0));
    let (entered_tx, entered) = mpsc::channel();
    let (leave, leave_rx) = mpsc::channel::<()>();
    let reader = {
        let reclaimer = reclaimer.clone();
        std::thread::spawn(move || {
            let guard = reclaimer.enter();
            entered_tx.send(()).unwrap();
            leave_rx.recv().unwrap();
            drop(guard);
        })
    };
    entered.recv().unwrap();
    retire_batch(&reclaimer, &freed);
    retire_batch(&reclaimer, &freed);
    assert_eq!(freed.load(SeqCst), 0, "the read began before both seals");
    leave.send(()).unwrap();
    reader.join().unwrap();
    let _ = seal_until_freed(&reclaimer, &freed, 2 * BATCH);
    Arc::into_inner(reclaimer)
        .expect("the reader is gone")
        .drain(free);
}

#[test]
fn a_nested_guard_leaving_does_not_end_the_read() {
    let reclaimer = Reclaimer::<Counted>::new();
    let other = Reclaimer::<Counted>::new();
    let freed = Arc::new(AtomicUsize::new(0));
    let outer = reclaimer.enter();
    {
        // Guards nest across tables too: one record serves the thread.
        let _inner = other.enter();
        let _innermost = reclaimer.enter();
    }
    retire_batch(&reclaimer, &freed);
    retire_batch(&reclaimer, &freed);
    assert_eq!(freed.load(SeqCst), 0, "the outer guard still reads");
    drop(outer);
    let mut reclaimer = reclaimer;
    let _ = seal_until_freed(&reclaimer, &freed, 2 * BATCH);
    reclaimer.drain(free);
}

#[test]
fn reads_that_began_after_a_seal_do_not_hold_it() {
    let mut reclaimer = Reclaimer::<Counted>::new();
    let freed = Arc::new(AtomicUsize::new(0));
    retire_batch(&reclaimer, &freed);
    // A read that starts and ends after the seal, and one still going.
    drop(reclaimer.enter());
    let still_reading = reclaimer.enter();
    // This thread's read began after the first seal: it holds the second batch only.
    retire_batch(&reclaimer, &freed);
    let _ = seal_until_freed(&reclaimer, &freed, BATCH);
    assert_eq!(
        freed.load(SeqCst),
        BATCH,
        "batches sealed during the read stay"
    );
    drop(still_reading);
    reclaimer.drain(free);
}

#[test]
fn in_bulk_batches_are_sealed_less_often_and_leaving_bulk_seals_what_is_open() {
    let freed = Arc::new(AtomicUsize::new(0));
    let mut reclaimer = Reclaimer::<Counted>::new();
    // SAFETY: read between the writer's calls, on the writer's thread.
    let sealed = |r: &Reclaimer<Counted>| unsafe { &*r.retired.get() }.sealed.len();
    // SAFETY: as in `retire_batch`.
    unsafe { reclaimer.retire_in_bulk(true, free) };
    // Holds every batch sealed while it lasts, so that each stays to be counted.
    let read = reclaimer.enter();
    for _ in 0..BULK_BATCH + BATCH {
        // SAFETY: as in `retire_batch`.
        unsafe { reclaimer.retire(node(&freed), free) };
    }
    assert_eq!(sealed(&reclaimer), 1, "one bulk batch, the rest open");
    // SAFETY: as in `retire_batch`.
    unsafe { reclaimer.retire_in_bulk(false, free) };
    assert_eq!(sealed(&reclaimer), 2, "leaving bulk sealed the open nodes");
    assert_eq!(freed.load(SeqCst), 0, "both held by the read");
    drop(read);
    let _ = seal_until_freed(&reclaimer, &freed, BULK_BATCH + BATCH);
    reclaimer.drain(free);
}

#[test]
fn a_drain_hands_back_everything_held() {
    let freed = Arc::new(AtomicUsize::new(0));
    let mut reclaimer = Reclaimer::<Counted>::new();
    let guard = reclaimer.enter();
    retire_batch(&reclaimer, &freed);
    // SAFETY: as in `retire_batch`.
    unsafe { reclaimer.retire(node(&freed), free) };
    assert_eq!(
        freed.load(SeqCst),
        0,
        "one batch sealed during the read, one open"
    );
    drop(guard);
    reclaimer.drain(free);
    assert_eq!(freed.load(SeqCst), BATCH + 1);
}

/// Readers load a published node and check it while the writer swaps in new ones and
/// retires the old: none is ever seen freed (and under `scripts/memcheck.sh`, valgrind
/// sees no read of freed memory).
#[test]
fn readers_never_see_a_node_freed_while_writers_swap_them() {
    const SWAPS: usize = 20_000;
    let reclaimer = Arc::new(Reclaimer::<Counted>::new());
    let freed = Arc::new(AtomicUsize::new(0));
    let mut nodes = vec![node(&freed)];
    // The link holds an index into `published`, as the table's links hold names.
    let published: Arc<Vec<AtomicU64>> = Arc::new((0..=SWAPS).map(|_| AtomicU64::new(0)).collect());
    published[0].store(nodes[0] as u64, SeqCst);
    let link = Arc::new(AtomicU32::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (reclaimer, published, link, done) = (
                reclaimer.clone(),
                published.clone(),
                link.clone(),
                done.clone(),
            );
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while reads < 1_000 || !done.load(SeqCst) {
                    let guard = reclaimer.enter();
                    let at = guard.protect_link(&link) as usize;
                    let ptr = published[at].load(SeqCst) as *const Counted;
                    // SAFETY: what is under test: a node loaded under a guard is not
                    // freed before the guard drops.
                    let canary = unsafe { (*ptr).canary.load(SeqCst) };
                    assert_eq!(canary, ALIVE, "read a freed node");
                    drop(guard);
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for at in 1..=SWAPS {
        let fresh = node(&freed);
        published[at].store(fresh as u64, SeqCst);
        link.store(at as u32, std::sync::atomic::Ordering::Release);
        nodes.push(fresh);
        // SAFETY: the old node is unlinked and retired once.
        unsafe { reclaimer.retire(nodes[at - 1], free) };
    }
    done.store(true, SeqCst);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    // A reader preempted inside a read holds every batch sealed meanwhile; with the
    // readers gone, the next seals free them all.
    let batches = seal_until_freed(&reclaimer, &freed, SWAPS);
    // SAFETY: the last node is still linked; nothing reads it any more.
    unsafe { reclaimer.retire(nodes[SWAPS], free) };
    Arc::into_inner(reclaimer)
        .expect("the readers are gone")
        .drain(free);
    assert_eq!(freed.load(SeqCst), SWAPS + 1 + batches * BATCH);
}

/// A read made from a thread-local's destructor, after the thread's seat may be gone
/// (destructors run in the reverse order of first use on Linux, so the seat, first used
/// after `LATE`, goes first), enters and leaves through a seat of its own.
#[test]
fn a_read_from_a_thread_local_destructor_enters_and_leaves() {
    struct ReadsOnDrop(Arc<Reclaimer<Counted>>, Arc<AtomicUsize>);
    impl Drop for ReadsOnDrop {
        fn drop(&mut self) {
            let guard = self.0.enter();
            let _nested = self.0.enter();
            drop(guard);
            self.1.fetch_add(1, SeqCst);
        }
    }
    thread_local! {
        static LATE: std::cell::RefCell<Option<ReadsOnDrop>> = const { std::cell::RefCell::new(None) };
    }
    let reclaimer = Arc::new(Reclaimer::<Counted>::new());
    let reads = Arc::new(AtomicUsize::new(0));
    let (r, n) = (reclaimer.clone(), reads.clone());
    std::thread::spawn(move || {
        LATE.with(|late| *late.borrow_mut() = Some(ReadsOnDrop(r.clone(), n)));
        drop(r.enter());
    })
    .join()
    .unwrap();
    assert_eq!(reads.load(SeqCst), 1);
    let freed = Arc::new(AtomicUsize::new(0));
    let _ = seal_until_freed(&reclaimer, &freed, BATCH);
    Arc::into_inner(reclaimer)
        .expect("the thread is gone")
        .drain(free);
}
