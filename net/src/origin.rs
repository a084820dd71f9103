//! The origin: where a key missing from every tier is fetched (read-through), and where
//! a PUT goes first when ORIGIN_WRITE is set (write-through). `ORIGIN_URL` is a template
//! whose `{key}` is replaced by the percent-encoded key. Requests run on the core's
//! blocking thread pool (ureq, a pooled keep-alive agent; ORIGIN_CONCURRENCY threads per
//! core), so an origin slower than the cache never stalls a serving core, and each
//! caller waits at most ORIGIN_TIMEOUT_MS, queueing for a thread included.

use std::io::Read;
use std::time::Duration;

use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but unreserved characters is encoded (RFC 3986).
const KEY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Clone)]
pub struct Origin {
    template: String,
    agent: ureq::Agent,
    max_body: usize,
    timeout: Duration,
}

/// What the origin had for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched {
    Found { body: Vec<u8>, json: bool },
    NotFound,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("the origin answered {0}")]
    Status(u16),
    #[error("the origin could not be reached in time (ORIGIN_TIMEOUT_MS): {0}")]
    Transport(String),
    #[error("the origin's value is larger than {0} bytes (CACHE_MAX_VALUE_BYTES)")]
    TooLarge(usize),
}

impl Origin {
    pub fn new(template: String, timeout: Duration, max_body: usize) -> Self {
        let agent = ureq::AgentBuilder::new().timeout(timeout).build();
        Self {
            template,
            agent,
            max_body,
            timeout,
        }
    }

    /// The template with `{key}` replaced by the key's bytes, each one outside the
    /// unreserved set percent-encoded (bytes, not characters: keys need not be UTF-8, and
    /// two distinct keys always give two distinct URLs).
    pub fn url(&self, key: &[u8]) -> String {
        self.template
            .replace("{key}", &percent_encode(key, KEY).to_string())
    }

    pub async fn fetch(&self, key: &[u8]) -> Result<Fetched, OriginError> {
        let (url, agent, max) = (self.url(key), self.agent.clone(), self.max_body);
        self.within_timeout(move || match agent.get(&url).call() {
            Ok(response) => {
                let json = response.content_type().ends_with("json");
                let mut body = Vec::new();
                response
                    .into_reader()
                    .take(max as u64 + 1)
                    .read_to_end(&mut body)
                    .map_err(|e| OriginError::Transport(e.to_string()))?;
                if body.len() > max {
                    return Err(OriginError::TooLarge(max));
                }
                Ok(Fetched::Found { body, json })
            }
            Err(ureq::Error::Status(404, _)) => Ok(Fetched::NotFound),
            Err(ureq::Error::Status(status, _)) => Err(OriginError::Status(status)),
            Err(e) => Err(OriginError::Transport(e.to_string())),
        })
        .await
    }

    /// Runs `request` on the blocking pool; gives up waiting after the timeout, however
    /// long the request queued for a thread (the thread finishes it and drops it).
    async fn within_timeout<T: Send + 'static>(
        &self,
        request: impl FnOnce() -> Result<T, OriginError> + Send + 'static,
    ) -> Result<T, OriginError> {
        let timeout = self.timeout;
        let blocking = async {
            monoio::spawn_blocking(request).await.unwrap_or_else(|_| {
                Err(OriginError::Transport(
                    "the request's thread panicked".into(),
                ))
            })
        };
        futures_lite::future::or(blocking, async move {
            monoio::time::sleep(timeout).await;
            Err(OriginError::Transport(format!(
                "no answer within {} ms",
                timeout.as_millis()
            )))
        })
        .await
    }

    /// PUTs `body` to the key's URL; any 2xx is success.
    pub async fn store(
        &self,
        key: &[u8],
        body: Vec<u8>,
        content_type: &'static str,
    ) -> Result<(), OriginError> {
        let (url, agent) = (self.url(key), self.agent.clone());
        self.within_timeout(move || {
            match agent
                .put(&url)
                .set("Content-Type", content_type)
                .send_bytes(&body)
            {
                Ok(_) => Ok(()),
                Err(ureq::Error::Status(status, _)) => Err(OriginError::Status(status)),
                Err(e) => Err(OriginError::Transport(e.to_string())),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded_into_the_template() {
        let origin = Origin::new(
            "http://o.test/users/{key}?full=1".into(),
            Duration::from_secs(1),
            10,
        );
        assert_eq!(
            origin.url(b"user:1/x y"),
            "http://o.test/users/user%3A1%2Fx%20y?full=1"
        );
        assert_eq!(
            origin.url(b"a-b_c.d~e"),
            "http://o.test/users/a-b_c.d~e?full=1"
        );
    }

    #[test]
    fn distinct_keys_that_are_not_utf8_get_distinct_urls() {
        let origin = Origin::new("http://o.test/{key}".into(), Duration::from_secs(1), 10);
        // Both of these decode lossily to one replacement character.
        assert_eq!(origin.url(b"\xff"), "http://o.test/%FF");
        assert_eq!(origin.url(b"\xfe"), "http://o.test/%FE");
        assert_eq!(origin.url("é".as_bytes()), "http://o.test/%C3%A9");
    }
}
