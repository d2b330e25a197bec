//! Sampling: an operation's samples interleaved with its floor's, after a warm-up.

use std::time::{Duration, Instant};

/// How many samples to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Pairs run and thrown away first (connections, caches, prepared statements).
    pub warmup: usize,
    /// Pairs kept.
    pub samples: usize,
}

impl Plan {
    /// The full run: enough pairs for a p99 and a tight interval.
    pub const FULL: Plan = Plan {
        warmup: 30,
        samples: 400,
    };
    /// `--quick`: checks that every row still runs; its timings mean nothing.
    pub const QUICK: Plan = Plan {
        warmup: 1,
        samples: 6,
    };
}

/// One timed call: how long it took and how many requests it sent to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Wall time of the timed part.
    pub elapsed: Duration,
    /// Requests (statements, HTTP requests) the timed part sent.
    pub requests: u64,
}

/// Times `call` and counts the requests it sent by reading `count` before and after.
pub async fn measure<T>(count: &dyn Fn() -> u64, call: impl Future<Output = T>) -> (T, Sample) {
    let before = count();
    let started = Instant::now();
    let out = call.await;
    let elapsed = started.elapsed();
    let requests = count().saturating_sub(before);
    (out, Sample { elapsed, requests })
}

/// Times `call`, which sends a known number of requests.
pub async fn timed<T>(requests: u64, call: impl Future<Output = T>) -> (T, Sample) {
    let started = Instant::now();
    let out = call.await;
    (
        out,
        Sample {
            elapsed: started.elapsed(),
            requests,
        },
    )
}

/// Samples of an operation and of its floor, taken in pairs: `op[i]` and `floor[i]` ran back to
/// back, so a slow phase of the machine or the server lands on both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paired {
    /// The operation's samples.
    pub op: Vec<Sample>,
    /// The floor's samples, `floor[i]` taken next to `op[i]`.
    pub floor: Vec<Sample>,
}

/// Runs `op` and `floor` alternately, `plan.warmup` pairs thrown away then `plan.samples` kept.
/// Which of the two goes first alternates from pair to pair, so neither always runs right after
/// the other (a connection just warmed, a page just cached). Both get the pair's index.
pub async fn interleave<A, B>(plan: Plan, mut op: A, mut floor: B) -> Paired
where
    A: AsyncFnMut(usize) -> Sample,
    B: AsyncFnMut(usize) -> Sample,
{
    for i in 0..plan.warmup {
        op(i).await;
        floor(i).await;
    }
    let mut paired = Paired {
        op: Vec::with_capacity(plan.samples),
        floor: Vec::with_capacity(plan.samples),
    };
    for n in 0..plan.samples {
        let i = plan.warmup + n;
        let (a, b) = if n % 2 == 0 {
            let a = op(i).await;
            (a, floor(i).await)
        } else {
            let b = floor(i).await;
            (op(i).await, b)
        };
        paired.op.push(a);
        paired.floor.push(b);
    }
    paired
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn sample(ms: u64) -> Sample {
        Sample {
            elapsed: Duration::from_millis(ms),
            requests: 1,
        }
    }

    #[tokio::test]
    async fn operation_and_floor_alternate_after_the_warmup() {
        let log = RefCell::new(Vec::new());
        let plan = Plan {
            warmup: 2,
            samples: 4,
        };
        let paired = interleave(
            plan,
            async |i| {
                log.borrow_mut().push(('A', i));
                sample(2)
            },
            async |i| {
                log.borrow_mut().push(('B', i));
                sample(1)
            },
        )
        .await;
        assert_eq!(
            log.into_inner(),
            [
                ('A', 0),
                ('B', 0),
                ('A', 1),
                ('B', 1),
                ('A', 2),
                ('B', 2),
                ('B', 3),
                ('A', 3),
                ('A', 4),
                ('B', 4),
                ('B', 5),
                ('A', 5),
            ]
        );
        assert_eq!(paired.op, vec![sample(2); 4]);
        assert_eq!(paired.floor, vec![sample(1); 4]);
    }

    #[tokio::test]
    async fn measure_counts_only_the_requests_of_the_call() {
        let counter = std::cell::Cell::new(5u64);
        let count = || counter.get();
        let ((), s) = measure(&count, async { counter.set(counter.get() + 3) }).await;
        assert_eq!(s.requests, 3);
    }
}
