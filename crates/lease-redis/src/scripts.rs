//! The server-side scripts: one per operation, each run atomically by `EVALSHA`.
//!
//! Every script first checks the types of the keys it touches and answers a `LEASECORRUPT` error
//! (leaving everything as it was) when one holds something this library did not write. The stored
//! value is described in [`crate::record`]. Scripts call `TIME`, which is safe for replication on
//! Redis 7 and later: scripts are replicated by their effects (the `SET` of the seeded counter),
//! not re-run on replicas.

/// Helpers every script starts with.
const PRELUDE: &str = r#"
local function corrupt(key, what)
  return redis.error_reply('LEASECORRUPT ' .. key .. ' ' .. what)
end
local function check(key)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'string' and t ~= 'none' then
    return corrupt(key, 'holds a ' .. t .. ', not a lease string')
  end
end
local function parse(v)
  return string.match(v, '^lease1 (%x+) (%d+) (%d+) (%d+) (.*)$')
end
local function encode(holder, token, ttl, acquired, meta)
  return table.concat({'lease1', holder, token, ttl, acquired, meta}, ' ')
end
local function unexpiring(key)
  if redis.call('PTTL', key) == -1 then
    return corrupt(key, 'has no expiry: something other than this library wrote or persisted it')
  end
end
local function now_us()
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2]))
end
"#;

/// KEYS: lease, counter. ARGV: holder, ttl_ms, metadata.
/// Returns `{1, token, ttl_ms}` when granted, `{0, value, pttl}` when held by another.
const ACQUIRE: &str = r#"
local err = check(KEYS[1]) or check(KEYS[2])
if err then return err end
local cur = redis.call('GET', KEYS[1])
if cur then
  local holder, token, _, acquired = parse(cur)
  if not holder then return corrupt(KEYS[1], 'holds a value this library did not write') end
  err = unexpiring(KEYS[1])
  if err then return err end
  if holder ~= ARGV[1] then return {0, cur, redis.call('PTTL', KEYS[1])} end
  redis.call('SET', KEYS[1], encode(holder, token, ARGV[2], acquired, ARGV[3]), 'PX', ARGV[2])
  return {1, token, ARGV[2]}
end
local counter = redis.call('GET', KEYS[2])
if counter then
  if not string.match(counter, '^%d+$') or #counter > 18 then
    return corrupt(KEYS[2], 'is not a fencing counter (or is exhausted)')
  end
else
  -- Lost (never created, flushed, evicted, restarted without persistence, a lagging replica
  -- promoted): start above every token the key can have issued, from the server's clock.
  redis.call('SET', KEYS[2], now_us())
end
redis.call('INCR', KEYS[2])
local token = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[1], encode(ARGV[1], token, ARGV[2], now_us(), ARGV[3]), 'PX', ARGV[2])
return {1, token, ARGV[2]}
"#;

/// KEYS: lease. ARGV: holder, ttl_ms. Returns the TTL set, or 0 when not held.
const RENEW: &str = r#"
local err = check(KEYS[1])
if err then return err end
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local holder, token, _, acquired, meta = parse(cur)
if not holder then return corrupt(KEYS[1], 'holds a value this library did not write') end
if holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], encode(holder, token, ARGV[2], acquired, meta), 'PX', ARGV[2])
return tonumber(ARGV[2])
"#;

/// KEYS: leases. ARGV: holder and ttl_ms per lease. Returns per lease the TTL set, 0 when not
/// held, -1 when the key holds something else (left untouched).
const RENEW_MANY: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do
  local holder_arg, ttl = ARGV[2 * i - 1], ARGV[2 * i]
  out[i] = 0
  if check(key) then
    out[i] = -1
  else
    local cur = redis.call('GET', key)
    if cur then
      local holder, token, _, acquired, meta = parse(cur)
      if not holder then
        out[i] = -1
      elseif holder == holder_arg then
        redis.call('SET', key, encode(holder, token, ttl, acquired, meta), 'PX', ttl)
        out[i] = tonumber(ttl)
      end
    end
  end
end
return out
"#;

/// KEYS: lease. ARGV: holder. Frees the key (the counter stays) and publishes on the lease
/// key's own channel. Returns 1 when released, 0 when not held.
const RELEASE: &str = r#"
local err = check(KEYS[1])
if err then return err end
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local holder = parse(cur)
if not holder then return corrupt(KEYS[1], 'holds a value this library did not write') end
if holder ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', KEYS[1], 'released')
return 1
"#;

/// KEYS: lease, counter. Returns `{value, pttl, counter}` as they were.
const READ: &str = r#"
local err = check(KEYS[1]) or check(KEYS[2])
if err then return err end
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[2])}
"#;

/// KEYS: lease, counter. Frees the key whoever holds it (the counter stays), publishes, and
/// returns `{value, pttl, counter}` as they were.
const BREAK: &str = r#"
local err = check(KEYS[1]) or check(KEYS[2])
if err then return err end
local cur = redis.call('GET', KEYS[1])
local pttl = redis.call('PTTL', KEYS[1])
if cur then
  if not parse(cur) then return corrupt(KEYS[1], 'holds a value this library did not write') end
  err = unexpiring(KEYS[1])
  if err then return err end
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[1], 'broken')
end
return {cur, pttl, redis.call('GET', KEYS[2])}
"#;

/// One script: its source (with the prelude) and SHA-1, which `EVALSHA` calls it by.
#[derive(Debug)]
pub(crate) struct Script {
    pub(crate) name: &'static str,
    pub(crate) source: String,
    pub(crate) sha: String,
}

impl Script {
    fn new(name: &'static str, body: &str) -> Self {
        let source = format!("{PRELUDE}{body}");
        let sha = redis::Script::new(&source).get_hash().to_owned();
        Self { name, source, sha }
    }
}

/// Every script the backend runs.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) acquire: Script,
    pub(crate) renew: Script,
    pub(crate) renew_many: Script,
    pub(crate) release: Script,
    pub(crate) read: Script,
    pub(crate) break_lease: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            acquire: Script::new("acquire", ACQUIRE),
            renew: Script::new("renew", RENEW),
            renew_many: Script::new("renew_many", RENEW_MANY),
            release: Script::new("release", RELEASE),
            read: Script::new("read", READ),
            break_lease: Script::new("break", BREAK),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_have_distinct_hashes() {
        let s = Scripts::new();
        let all = [
            &s.acquire,
            &s.renew,
            &s.renew_many,
            &s.release,
            &s.read,
            &s.break_lease,
        ];
        let hashes: std::collections::HashSet<_> = all.iter().map(|s| s.sha.as_str()).collect();
        assert_eq!(hashes.len(), all.len());
        assert!(all.iter().all(|s| s.sha.len() == 40));
    }
}
