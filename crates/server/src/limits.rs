//! Rate limits on the endpoints anyone can reach without signing in (sign-in, enrollment,
//! device authorization, the token endpoint), per client address and per account, with the
//! `governor` crate's GCRA limiters; and the aggregation of refused sign-ins in the audit log,
//! so a flood of bad assertions from one source becomes one summary record, not one each.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;
use crate::state::AppState;

/// Requests per minute one client address may make to the unauthenticated endpoints (and the
/// burst it may spend at once).
pub const DEFAULT_PER_ADDRESS_PER_MINUTE: u32 = 300;
/// Sign-in, enrollment and token attempts per minute for one account (user name, enrollment
/// link, device code or refresh token family), whatever the address.
pub const DEFAULT_PER_ACCOUNT_PER_MINUTE: u32 = 60;
/// Refused sign-ins from one source within this window after the first are counted, then
/// written as one `auth.refused_summary` record.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(600);
/// Most sources whose refusals are tallied at once (more are summarised together).
const MAX_TALLIES: usize = 10_000;

/// The address a request came from (set by [`limit_unauthenticated`]).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub IpAddr);

/// Refusals from one source since its first audited one.
#[derive(Debug)]
struct Tally {
    first: Instant,
    first_unix: i64,
    count: u64,
    reasons: HashMap<String, u64>,
}

/// The server's limiters and refusal tallies.
pub struct Limits {
    by_address: DefaultKeyedRateLimiter<IpAddr>,
    by_account: DefaultKeyedRateLimiter<String>,
    tallies: Mutex<HashMap<IpAddr, Tally>>,
    trust_forwarded: bool,
}

/// `per_minute` a minute, all of which may be spent at once (a burst of a minute's worth).
fn quota(per_minute: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN))
}

impl Limits {
    /// Limiters allowing `per_address_per_minute` requests per client address and
    /// `per_account_per_minute` attempts per account; when `trust_forwarded` (behind a reverse
    /// proxy), the address is the last hop the proxy added to `X-Forwarded-For`.
    pub fn new(per_address_per_minute: u32, per_account_per_minute: u32, trust_forwarded: bool) -> Limits {
        Limits {
            by_address: RateLimiter::keyed(quota(per_address_per_minute)),
            by_account: RateLimiter::keyed(quota(per_account_per_minute)),
            tallies: Mutex::new(HashMap::new()),
            trust_forwarded,
        }
    }

    fn refused(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> ApiError {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        // Whole seconds, rounded up: a client that waits that long gets through.
        ApiError::RateLimited { retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0) }
    }

    /// One attempt for `account` (a kind-prefixed key: `user:alice`, `link:<hash>`, …).
    pub fn check_account(&self, account: &str) -> Result<(), ApiError> {
        let key: String = account.chars().take(200).collect();
        self.by_account.check_key(&key).map_err(Self::refused)
    }

    /// Drops limiter state of keys idle long enough to be full again (called by housekeeping,
    /// so the maps stay as small as the set of recently active clients).
    pub fn forget_idle(&self) {
        self.by_address.retain_recent();
        self.by_account.retain_recent();
        self.by_address.shrink_to_fit();
        self.by_account.shrink_to_fit();
    }

    /// Keys the limiters hold now (for the bounded-memory test and metrics).
    pub fn tracked(&self) -> usize {
        self.by_address.len() + self.by_account.len()
    }

    /// Notes a refused sign-in from `source` for `reason`. Returns true if this one should be
    /// audited on its own (the first from the source in a window); later ones are counted and
    /// summarised by [`Limits::summaries`].
    pub fn note_refusal(&self, source: Option<IpAddr>, reason: &str, now_unix: i64) -> bool {
        let Some(ip) = source else { return true };
        let mut tallies = self.tallies.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tallies.get_mut(&ip) {
            t.count += 1;
            if t.reasons.len() < 16 || t.reasons.contains_key(reason) {
                *t.reasons.entry(reason.to_string()).or_default() += 1;
            }
            return false;
        }
        if tallies.len() >= MAX_TALLIES {
            // Too many sources at once: the unspecified address stands for the rest.
            let t = tallies.entry(IpAddr::from([0, 0, 0, 0])).or_insert_with(|| Tally {
                first: Instant::now(),
                first_unix: now_unix,
                count: 0,
                reasons: HashMap::new(),
            });
            t.count += 1;
            return false;
        }
        tallies.insert(ip, Tally { first: Instant::now(), first_unix: now_unix, count: 0, reasons: HashMap::new() });
        true
    }

    /// Ends the windows that are over (all of them when `flush`), returning one summary per
    /// source that had more refusals than the one audited on its own.
    pub fn summaries(&self, flush: bool) -> Vec<serde_json::Value> {
        let mut tallies = self.tallies.lock().unwrap_or_else(|p| p.into_inner());
        let done: Vec<IpAddr> =
            tallies.iter().filter(|(_, t)| flush || t.first.elapsed() >= REFUSAL_WINDOW).map(|(ip, _)| *ip).collect();
        done.into_iter()
            .filter_map(|ip| tallies.remove(&ip).map(|t| (ip, t)))
            .filter(|(_, t)| t.count > 0)
            .map(|(ip, t)| {
                serde_json::json!({
                    "source": ip.to_string(), "refused": t.count, "since": t.first_unix,
                    "window_seconds": REFUSAL_WINDOW.as_secs(), "reasons": t.reasons,
                })
            })
            .collect()
    }

    fn client_addr(&self, req: &Request) -> Option<IpAddr> {
        let peer = req.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
        // X-Forwarded-For is believed only from a proxy on this host or the private network:
        // a client reaching the listener directly cannot pick its own address.
        if self.trust_forwarded && peer.is_some_and(is_local_or_private) {
            // Only the hop our proxy appended (the rightmost) is trusted; anything left of it
            // came from the client.
            let forwarded = req
                .headers()
                .get_all("x-forwarded-for")
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|a| a.trim().parse::<IpAddr>().ok());
            if forwarded.is_some() {
                return forwarded.map(bucket);
            }
        }
        peer.map(bucket)
    }
}

/// The key an address is limited under: IPv6 by its /64 (one subscriber's whole range), so a
/// host cannot get a fresh quota from every address it owns.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

fn is_local_or_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Middleware for the unauthenticated endpoints: refuses with 429 and `Retry-After` once the
/// client address spent its quota, and tells the handler the address ([`ClientAddr`]).
pub async fn limit_unauthenticated(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let addr = state.limits.client_addr(&req);
    if let Some(ip) = addr {
        if let Err(not_until) = state.limits.by_address.check_key(&ip) {
            state.metrics.refused("request.rate_limited");
            return Limits::refused(not_until).into_response();
        }
        req.extensions_mut().insert(ClientAddr(ip));
    }
    next.run(req).await
}
