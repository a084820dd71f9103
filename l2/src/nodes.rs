//! Connections to single Redis nodes, shared by the client, pub/sub and client tracking:
//! a client with the configured TLS trust, and a cluster's layout (which master holds
//! which slots) as `CLUSTER NODES` tells it.

use std::time::Duration;

use redis::ConnectionInfo;

use crate::error::L2Error;

/// The CA certificates to trust, as the redis crate takes them.
pub(crate) fn certificates(ca: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.to_vec()),
    }
}

/// A client for `info`, trusting `ca` instead of the system's roots when given.
pub(crate) fn client_for(
    info: ConnectionInfo,
    ca: Option<&[u8]>,
) -> Result<redis::Client, L2Error> {
    match ca {
        Some(ca) => redis::Client::build_with_tls(info, certificates(ca)),
        None => redis::Client::open(info),
    }
    .map_err(|e| L2Error::Config(e.to_string()))
}

/// A master and the slot ranges it holds.
pub(crate) type Master = (ConnectionInfo, Vec<std::ops::RangeInclusive<u16>>);

/// The master that holds `key`'s slot (a key or a channel name), if the layout has one.
pub(crate) fn master_of<'a>(layout: &'a [Master], key: &[u8]) -> Option<&'a ConnectionInfo> {
    let slot = redis::cluster_routing::get_slot(key);
    layout
        .iter()
        .find(|(_, ranges)| ranges.iter().any(|r| r.contains(&slot)))
        .map(|(info, _)| info)
}

/// The cluster's current masters and their slots, asked (`CLUSTER NODES`) of the first
/// seed that answers within `timeout`, with the seeds' credentials and TLS.
pub(crate) async fn read_layout(
    seeds: &[ConnectionInfo],
    ca: Option<&Vec<u8>>,
    timeout: Duration,
) -> Result<Vec<Master>, L2Error> {
    let mut last = L2Error::Config("no cluster nodes".into());
    for seed in seeds {
        let asked = async {
            let client = client_for(seed.clone(), ca.map(Vec::as_slice))?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout);
            let mut connection = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let text: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut connection)
                .await?;
            Ok::<_, L2Error>(cluster_masters(&text, seed))
        };
        match tokio::time::timeout(timeout, asked).await {
            Ok(Ok(masters)) => return Ok(masters),
            Ok(Err(e)) => last = e,
            Err(_) => last = L2Error::Timeout(timeout),
        }
    }
    Err(last)
}

/// The masters a `CLUSTER NODES` text lists as healthy, each with its slot ranges, and
/// the connection details of `template` (credentials, TLS) at its address.
pub(crate) fn cluster_masters(nodes: &str, template: &ConnectionInfo) -> Vec<Master> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.contains("master") || flags.contains("fail") {
                return None;
            }
            let address = fields.get(1)?.split('@').next()?;
            let (host, port) = address.rsplit_once(':')?;
            let mut info = template.clone();
            info.addr = at(&template.addr, host, port.parse().ok()?);
            // Slots are `N` or `A-B`; `[…]` entries are slots being migrated.
            let ranges = fields
                .iter()
                .skip(8)
                .filter(|f| !f.starts_with('['))
                .filter_map(|f| {
                    let (a, b) = f.split_once('-').unwrap_or((f, f));
                    Some(a.parse().ok()?..=b.parse().ok()?)
                })
                .collect();
            Some((info, ranges))
        })
        .collect()
}

/// `template`'s kind of address (plain or TLS, with its TLS settings) at `host:port`.
pub(crate) fn at(template: &redis::ConnectionAddr, host: &str, port: u16) -> redis::ConnectionAddr {
    match template {
        redis::ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => redis::ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => redis::ConnectionAddr::Tcp(host.to_owned(), port),
    }
}

#[cfg(test)]
mod tests {
    use redis::IntoConnectionInfo;

    use super::*;

    #[test]
    fn cluster_nodes_give_the_healthy_masters_and_their_slots() {
        let text = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460 [5461->-b2]
b2 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922 16000
c3 127.0.0.1:7003@17003 master,fail - 0 0 3 disconnected 10923-15999
d4 127.0.0.1:7004@17004 slave a1 0 0 1 connected
";
        let template = "rediss://:secret@127.0.0.1:7001"
            .into_connection_info()
            .unwrap();
        let masters = cluster_masters(text, &template);
        assert_eq!(
            masters.len(),
            2,
            "the failed master and the replica are left out"
        );
        assert_eq!(
            masters[0].1,
            vec![0..=5460],
            "a slot being migrated is not listed"
        );
        assert_eq!(masters[1].1, vec![5461..=10922, 16000..=16000]);
        let redis::ConnectionAddr::TcpTls { host, port, .. } = &masters[1].0.addr else {
            panic!("the template's TLS is kept: {:?}", masters[1].0.addr)
        };
        assert_eq!((host.as_str(), *port), ("127.0.0.1", 7002));
        assert_eq!(masters[1].0.redis.password.as_deref(), Some("secret"));
    }
}
