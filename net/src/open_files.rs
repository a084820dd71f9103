//! The process's open-file limit, fitted at start to the connections it is set to hold.
//!
//! Every client connection is a descriptor, and a shell's soft limit is often 1,024.
//! Under it, a core past about a thousand connections failed each accept with EMFILE,
//! and the clients beyond waited unanswered in the listen backlog, where
//! CACHE_MAX_CONNECTIONS promises them a 503.
//!
//! So, as Redis does for `maxclients`, the soft limit is raised at start to what every
//! core's connections need, plus a reserve for the rest (listeners, rings, origin and
//! Redis connections, snapshot files). Where the hard limit is lower than that, the
//! per-core connection limit is lowered to fit under it, and a warning names both.
//! `cache-bench` raises its own limit for its connections the same way
//! ([`raise_soft_limit`]).

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::config::Config;

/// Descriptors each core holds besides its clients and its origin connections: its
/// listener, its ring (or epoll instance) and the eventfds that wake it.
const PER_CORE: u64 = 8;
/// Descriptors the process holds besides its cores': the standard streams, the Redis
/// connections (one or two for each master of a cluster), snapshot files being written
/// or read, and spares.
const PROCESS: u64 = 64;

/// What the limits allow: the soft limit to set, if it must rise, and the connections
/// each core may hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Fitted {
    raise_to: Option<u64>,
    max_connections: usize,
}

/// The hard limit leaves no descriptor for a client connection.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the open-file limit of {hard} leaves no descriptor for client connections: {cores} \
     core(s) need {per_core} each besides their clients, and the process {PROCESS}; raise \
     it (`ulimit -n`, systemd's LimitNOFILE) or lower CACHE_CORES or ORIGIN_CONCURRENCY"
)]
pub(crate) struct TooFew {
    hard: u64,
    cores: u64,
    per_core: u64,
}

/// Fits `max_connections` per core on `cores` cores, each with `origin_threads` threads
/// that may hold an origin connection, under the limits `soft` and `hard` (`None`:
/// unlimited). The soft limit never falls.
pub(crate) fn fit(
    max_connections: usize,
    cores: usize,
    origin_threads: usize,
    soft: Option<u64>,
    hard: Option<u64>,
) -> Result<Fitted, TooFew> {
    let cores = cores as u64;
    let per_core = PER_CORE + origin_threads as u64;
    let need = cores
        .saturating_mul((max_connections as u64).saturating_add(per_core))
        .saturating_add(PROCESS);
    let (soft, hard) = (soft.unwrap_or(u64::MAX), hard.unwrap_or(u64::MAX));
    let available = need.min(hard);
    let raise_to = (available > soft).then_some(available);
    if need <= hard {
        return Ok(Fitted {
            raise_to,
            max_connections,
        });
    }
    let fits = (hard.saturating_sub(PROCESS) / cores).saturating_sub(per_core);
    if fits == 0 {
        return Err(TooFew {
            hard,
            cores,
            per_core,
        });
    }
    Ok(Fitted {
        raise_to,
        max_connections: usize::try_from(fits).unwrap_or(usize::MAX),
    })
}

/// Why the soft limit could not be raised as far as needed.
#[derive(Debug, thiserror::Error)]
pub enum RaiseError {
    #[error(
        "{need} open files are needed, over the hard limit of {hard}: raise it (`ulimit -n`, \
         systemd's LimitNOFILE)"
    )]
    OverHard { need: u64, hard: u64 },
    #[error("raising the open-file limit to {to} (RLIMIT_NOFILE): {source}")]
    Refused { to: u64, source: rustix::io::Errno },
}

/// Raises the process's soft limit to `need` descriptors, unless it is that high already.
pub fn raise_soft_limit(need: u64) -> Result<(), RaiseError> {
    let limits = getrlimit(Resource::Nofile);
    if let Some(hard) = limits.maximum.filter(|&hard| hard < need) {
        return Err(RaiseError::OverHard { need, hard });
    }
    if limits.current.is_some_and(|soft| soft < need) {
        set_soft_limit(need, limits.maximum)?;
    }
    Ok(())
}

fn set_soft_limit(to: u64, hard: Option<u64>) -> Result<(), RaiseError> {
    let limit = Rlimit {
        current: Some(to),
        maximum: hard,
    };
    setrlimit(Resource::Nofile, limit).map_err(|source| RaiseError::Refused { to, source })
}

/// Raises the process's soft limit as [`fit`] finds it must, and lowers
/// `config.max_connections` where the hard limit is short, with a warning.
pub(crate) fn fit_process(config: &mut Config) -> anyhow::Result<()> {
    let origin_threads = match config.origin_url {
        Some(_) => config.origin_concurrency,
        None => 0,
    };
    let limits = getrlimit(Resource::Nofile);
    let fitted = fit(
        config.max_connections,
        config.cores(),
        origin_threads,
        limits.current,
        limits.maximum,
    )?;
    if let Some(raised) = fitted.raise_to {
        set_soft_limit(raised, limits.maximum)?;
    }
    if fitted.max_connections < config.max_connections {
        tracing::warn!(
            requested = config.max_connections,
            fitted = fitted.max_connections,
            open_file_limit = limits.maximum.unwrap_or(u64::MAX),
            "CACHE_MAX_CONNECTIONS lowered to fit the hard open-file limit; past it, \
             clients get the 503. Raise the limit (`ulimit -n`, systemd's LimitNOFILE) to \
             hold more"
        );
        config.max_connections = fitted.max_connections;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_soft_limit_under_what_the_connections_need_is_raised_to_it() {
        // 2 cores × (4,096 + 8) + 64.
        let fitted = fit(4096, 2, 0, Some(1024), Some(1 << 20)).unwrap();
        assert_eq!(fitted.raise_to, Some(8272));
        assert_eq!(fitted.max_connections, 4096);
    }

    #[test]
    fn origin_threads_count_toward_each_core() {
        let fitted = fit(100, 2, 32, Some(64), None).unwrap();
        assert_eq!(fitted.raise_to, Some(2 * (100 + 8 + 32) + 64));
    }

    #[test]
    fn a_soft_limit_that_suffices_is_left_as_it_is() {
        let fitted = fit(4096, 1, 0, Some(1 << 20), Some(1 << 20)).unwrap();
        assert_eq!(fitted.raise_to, None);
        assert_eq!(fitted.max_connections, 4096);
        let unlimited = fit(4096, 64, 32, None, None).unwrap();
        assert_eq!(unlimited.raise_to, None);
    }

    #[test]
    fn a_short_hard_limit_lowers_the_connections_to_fit_under_it() {
        let fitted = fit(4096, 2, 0, Some(1024), Some(4096)).unwrap();
        assert_eq!(fitted.raise_to, Some(4096));
        // (4,096 − 64) / 2 − 8.
        assert_eq!(fitted.max_connections, 2008);
        let used = 2 * (fitted.max_connections as u64 + PER_CORE) + PROCESS;
        assert!(used <= 4096, "{used} descriptors over the limit");
        // At the limit already: nothing to raise, the connections still fitted.
        let at_limit = fit(4096, 2, 0, Some(4096), Some(4096)).unwrap();
        assert_eq!(at_limit.raise_to, None);
        assert_eq!(at_limit.max_connections, 2008);
    }

    #[test]
    fn the_process_limit_is_raised_only_within_the_hard_limit() {
        let limits = getrlimit(Resource::Nofile);
        // An unlimited soft limit is never raised; there is nothing to see.
        let Some(soft) = limits.current else { return };
        raise_soft_limit(soft).unwrap();
        assert_eq!(getrlimit(Resource::Nofile).current, Some(soft));
        if let Some(hard) = limits.maximum {
            match raise_soft_limit(hard + 1) {
                Err(RaiseError::OverHard { need, hard: named }) => {
                    assert_eq!((need, named), (hard + 1, hard));
                }
                other => panic!("raising past the hard limit of {hard}: {other:?}"),
            }
            assert_eq!(getrlimit(Resource::Nofile).current, Some(soft));
        }
    }

    #[test]
    fn a_hard_limit_with_no_room_for_clients_is_refused_with_what_it_needs() {
        let refused = fit(4096, 4, 32, Some(100), Some(200)).unwrap_err();
        let message = refused.to_string();
        assert!(message.contains("200"), "{message}");
        assert!(message.contains("40 each"), "{message}");
        assert!(message.contains("ulimit -n"), "{message}");
    }
}
