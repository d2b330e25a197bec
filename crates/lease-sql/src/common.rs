//! What every dialect shares: options, the validated table name, error classification, decoding.

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use lease_core::{
    BackendError, FencingToken, HolderMetadata, HolderToken, InvalidInput, LeaseKey, LeaseRecord,
    RecordState,
};

use crate::dialect::{BatchLease, ListedRow};

/// The name of the lease table, validated as a SQL identifier so it can be spliced into
/// statements: `table` or `schema.table`, each part matching `[A-Za-z_][A-Za-z0-9_]{0,62}`.
///
/// Every statement quotes each part (`"part"` on PostgreSQL and SQLite, `` `part` `` on MySQL), so
/// reserved words are fine, and on PostgreSQL the name is case-sensitive.
///
/// ```
/// use lease_sql::TableName;
/// assert_eq!(TableName::new("app.leases")?.as_str(), "app.leases");
/// assert!(TableName::new("leases; DROP TABLE users").is_err());
/// assert_eq!(TableName::default().as_str(), "leases");
/// # Ok::<(), lease_sql::InvalidInput>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    schema: Option<String>,
    table: String,
}

impl TableName {
    /// Validates `name` (`table` or `schema.table`).
    ///
    /// # Errors
    /// [`InvalidInput`] for the field `table name` when a part is empty, longer than 63 bytes,
    /// starts with a digit or contains anything but ASCII letters, digits and `_`.
    pub fn new(name: &str) -> Result<Self, InvalidInput> {
        let mut parts = name.split('.');
        let first = parts.next().unwrap_or_default();
        let second = parts.next();
        if parts.next().is_some() {
            return Err(InvalidInput::new(
                "table name",
                "expected `table` or `schema.table`, found more than one '.'",
            ));
        }
        check_identifier(first)?;
        match second {
            None => Ok(Self {
                schema: None,
                table: first.to_owned(),
            }),
            Some(table) => {
                check_identifier(table)?;
                Ok(Self {
                    schema: Some(first.to_owned()),
                    table: table.to_owned(),
                })
            }
        }
    }

    /// The name as given (`table` or `schema.table`), unquoted.
    pub fn as_str(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{}", self.table),
            None => self.table.clone(),
        }
    }

    /// The table part, without the schema.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The schema part, if one was given.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The name quoted with `quote` around each part. Safe because every part was validated.
    pub(crate) fn quoted(&self, quote: char) -> String {
        match &self.schema {
            Some(schema) => format!("{quote}{schema}{quote}.{quote}{}{quote}", self.table),
            None => format!("{quote}{}{quote}", self.table),
        }
    }
}

fn check_identifier(part: &str) -> Result<(), InvalidInput> {
    let fail = |reason: String| Err(InvalidInput::new("table name", reason));
    let Some(first) = part.chars().next() else {
        return fail("an identifier must not be empty".into());
    };
    if part.len() > 63 {
        return fail(format!(
            "{} bytes is longer than the 63 allowed",
            part.len()
        ));
    }
    if !(first.is_ascii_alphabetic() || first == '_') {
        return fail("an identifier must start with an ASCII letter or '_'".into());
    }
    if let Some(bad) = part
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return fail(format!(
            "contains {bad:?}; only ASCII letters, digits and '_' are allowed"
        ));
    }
    Ok(())
}

impl Default for TableName {
    fn default() -> Self {
        Self {
            schema: None,
            table: "leases".to_owned(),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl fmt::Debug for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TableName({:?})", self.as_str())
    }
}

impl std::str::FromStr for TableName {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Options shared by the SQL backends.
///
/// ```
/// use std::time::Duration;
/// use lease_sql::{SqlOptions, TableName};
/// let options = SqlOptions::default()
///     .with_table(TableName::new("job_leases")?)
///     .with_max_connections(4)
///     .with_acquire_timeout(Duration::from_secs(2));
/// assert_eq!(options.table.as_str(), "job_leases");
/// # Ok::<(), lease_sql::InvalidInput>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqlOptions {
    /// The lease table (default `leases`).
    pub table: TableName,
    /// Pool size used by `connect` / `connect_with` (default 5; SQLite in-memory databases use 1).
    pub max_connections: u32,
    /// How long `connect` and each operation wait for a pooled connection (default 5 s). A wait
    /// that runs out is a transient error.
    pub acquire_timeout: Duration,
    /// SQLite only: how long a statement waits for another process's write lock before failing
    /// with a transient error (default 5 s).
    pub busy_timeout: Duration,
    /// The [`FenceTable`](crate::FenceTable) that `migrate` creates and
    /// [`SqlBackend::fences`](crate::SqlBackend::fences) returns (default `lease_fences`).
    pub fence_table: TableName,
    /// PostgreSQL only: the connection pooler in front of the server (default: none); see
    /// [`Pooler`](crate::Pooler).
    pub pooler: crate::Pooler,
}

impl Default for SqlOptions {
    fn default() -> Self {
        Self {
            table: TableName::default(),
            max_connections: 5,
            acquire_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
            fence_table: crate::FenceTable::default().table().clone(),
            pooler: crate::Pooler::none(),
        }
    }
}

impl SqlOptions {
    /// Sets the lease table.
    #[must_use]
    pub fn with_table(mut self, table: TableName) -> Self {
        self.table = table;
        self
    }

    /// Sets the pool size used by `connect` / `connect_with`.
    #[must_use]
    pub fn with_max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Sets how long to wait for a pooled connection.
    #[must_use]
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Sets the fence table.
    #[must_use]
    pub fn with_fence_table(mut self, table: TableName) -> Self {
        self.fence_table = table;
        self
    }

    /// Sets the PostgreSQL connection pooler; see [`Pooler`](crate::Pooler).
    #[must_use]
    pub fn with_pooler(mut self, pooler: crate::Pooler) -> Self {
        self.pooler = pooler;
        self
    }

    /// Sets SQLite's busy timeout.
    #[must_use]
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }
}

/// The capabilities every SQL backend shares.
pub(crate) fn base_capabilities() -> lease_core::Capabilities {
    lease_core::Capabilities::new(
        Duration::from_millis(1),
        Duration::from_secs(365 * 24 * 3600),
        lease_core::ClockModel::StoreClock,
    )
    .with_break(true)
    .with_batch_renew(true)
    .with_takeover_tolerance(Duration::from_millis(100))
}

/// A requested TTL as stored in `ttl_ms`, or the typed refusal of one outside
/// [`base_capabilities`]' range (1 ms … 365 days).
pub(crate) fn checked_ttl(backend: &'static str, ttl: Duration) -> Result<i64, BackendError> {
    base_capabilities()
        .check_ttl(ttl)
        .map_err(|e| BackendError::invalid_input(backend, e))?;
    Ok(ttl_ms(ttl))
}

/// A TTL as whole milliseconds (rounded down; at least 1), the unit stored in `ttl_ms`.
pub(crate) fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// The first string past every string that starts with `prefix` (byte order), or `None` when
/// every string does (`""`). `prefix` is ASCII (checked as a key prefix), so incrementing its last
/// byte is enough: `'z'` and the other key characters are all below `0x7f`.
pub(crate) fn prefix_successor(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return Some(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    None
}

/// A listed row. A name that is not a lease key is not a lease row: skipped, as the other
/// backends skip objects whose names are not keys. Columns that cannot be decoded make the row
/// [`LeaseRecord::unreadable`], so one bad row does not hide the others.
pub(crate) fn decode_listed(
    backend: &'static str,
    name: String,
    raw: Result<RawRecord, BackendError>,
) -> Result<ListedRow, BackendError> {
    let Ok(key) = LeaseKey::new(name.as_str()) else {
        tracing::debug!(row = %shorten(&name), "not a lease key; skipped");
        return Ok(ListedRow { name, record: None });
    };
    let read = raw.and_then(|raw| raw.decode(backend, &key));
    let record = LeaseRecord::listed(key, read)?;
    Ok(ListedRow {
        name,
        record: Some(record),
    })
}

/// A TTL stored in `ttl_ms`, as returned by an upsert or renewal.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn granted_ttl(backend: &'static str, ms: i64) -> Result<Duration, BackendError> {
    u64::try_from(ms).map(Duration::from_millis).map_err(|_| {
        BackendError::corrupt_record(backend, format!("ttl_ms column holds {ms}, a negative TTL"))
    })
}

/// A fencing value read from the table.
pub(crate) fn fencing(backend: &'static str, value: i64) -> Result<FencingToken, BackendError> {
    u64::try_from(value).map(FencingToken::new).map_err(|_| {
        BackendError::corrupt_record(
            backend,
            format!("fencing column holds {value}, a negative token"),
        )
    })
}

/// One row of the lease table as read, before it is understood.
#[derive(Debug, Default)]
pub(crate) struct RawRecord {
    pub(crate) holder: Option<String>,
    pub(crate) holder_meta: Option<String>,
    pub(crate) fencing: Option<i64>,
    pub(crate) ttl_ms: Option<i64>,
    /// When the grant was made, microseconds since the Unix epoch (server clock).
    pub(crate) acquired_at_us: Option<i64>,
    /// Expiry minus the server's now, in microseconds (negative once expired).
    pub(crate) remaining_us: Option<i64>,
}

fn shorten(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .take(40)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if value.chars().count() > 40 {
        format!("{cleaned:?}…")
    } else {
        format!("{cleaned:?}")
    }
}

impl RawRecord {
    /// Understands the row, or says precisely why it cannot (never panics).
    pub(crate) fn decode(
        self,
        backend: &'static str,
        key: &LeaseKey,
    ) -> Result<LeaseRecord, BackendError> {
        let corrupt = |what: String| {
            BackendError::corrupt_record(backend, format!("the row for lease {key} {what}"))
        };
        let Some(raw_fencing) = self.fencing else {
            return Err(corrupt("has a NULL fencing column".into()));
        };
        let fencing = fencing(backend, raw_fencing)
            .map_err(|_| corrupt(format!("has a negative fencing value {raw_fencing}")))?;
        let Some(holder) = self.holder else {
            return Ok(LeaseRecord::free(key.clone(), fencing));
        };
        let token: HolderToken = holder.parse().map_err(|_| {
            corrupt(format!(
                "has holder {}, which is not a holder token",
                shorten(&holder)
            ))
        })?;
        let Some(ttl) = self.ttl_ms else {
            return Err(corrupt("is held but has a NULL ttl_ms".into()));
        };
        let ttl = u64::try_from(ttl)
            .map(Duration::from_millis)
            .map_err(|_| corrupt(format!("has a negative ttl_ms {ttl}")))?;
        let Some(remaining) = self.remaining_us else {
            return Err(corrupt(
                "is held but has a NULL or unreadable expires_at".into(),
            ));
        };
        let mut record = LeaseRecord::held(key.clone(), token, fencing).with_ttl(ttl);
        record = match u64::try_from(remaining) {
            Ok(us) if us > 0 => record.with_expires_in(Duration::from_micros(us)),
            _ => record
                .with_state(RecordState::Expired)
                .with_expires_in(Duration::ZERO),
        };
        if let Some(meta) = self.holder_meta {
            record = record.with_metadata(HolderMetadata::from_stored_lossy(&meta));
        }
        if let Some(at) = self.acquired_at_us.and_then(|us| u64::try_from(us).ok())
            && let Some(at) = UNIX_EPOCH.checked_add(Duration::from_micros(at))
        {
            record = record.with_acquired_at(at);
        }
        Ok(record)
    }
}

/// What kind of failure a database-reported error is, per dialect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DbClass {
    Transient,
    Fatal,
    Corrupt,
}

/// Classifies a sqlx error. `db` classifies errors the server reported.
pub(crate) fn classify(
    backend: &'static str,
    op: &str,
    error: sqlx::Error,
    db: fn(&dyn sqlx::error::DatabaseError) -> DbClass,
) -> BackendError {
    use sqlx::Error as E;
    let message = format!("{op}: {error}");
    let out = match &error {
        E::Database(e) => match db(e.as_ref()) {
            DbClass::Transient => BackendError::transient(backend, message),
            DbClass::Fatal => BackendError::fatal(backend, message),
            DbClass::Corrupt => BackendError::corrupt_record(backend, message),
        },
        // The request may or may not have reached the server: the outcome is unknown.
        E::Io(_) | E::Protocol(_) | E::PoolTimedOut | E::WorkerCrashed => {
            BackendError::transient(backend, message)
        }
        E::ColumnDecode { .. }
        | E::Decode(_)
        | E::ColumnNotFound(_)
        | E::ColumnIndexOutOfBounds { .. }
        | E::TypeNotFound { .. } => BackendError::corrupt_record(backend, message),
        _ => BackendError::fatal(backend, message),
    };
    out.with_source(error)
}

/// Removes the password of `url` (if any, raw or percent-decoded) from `text`.
pub(crate) fn scrub(text: String, url: &str) -> String {
    let Some(password) = url_password(url) else {
        return text;
    };
    let mut text = text.replace(password, "***");
    let decoded = percent_decode(password);
    if !decoded.is_empty() {
        text = text.replace(&decoded, "***");
    }
    text
}

fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then_some(password)
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(hi * 16 + lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A connect-time failure: an unparsable URL is invalid input, the rest is classified.
pub(crate) fn connect_error(
    backend: &'static str,
    url: &str,
    error: sqlx::Error,
    db: fn(&dyn sqlx::error::DatabaseError) -> DbClass,
) -> lease_core::Error {
    match error {
        sqlx::Error::Configuration(e) => lease_core::Error::InvalidInput(InvalidInput::new(
            "database url",
            scrub(format!("not a usable {backend} URL: {e}"), url),
        )),
        other => {
            let classified = classify(backend, "connect", other, db);
            // Rebuild without the source chain, whose text we cannot scrub.
            lease_core::Error::Backend(BackendError::new(
                classified.kind(),
                backend,
                scrub(classified.message().to_owned(), url),
            ))
        }
    }
}

/// The largest value the `fencing` column holds. A row at it can never be granted again: every
/// dialect's acquire refuses to take it over, and the read-back reports it as corrupt.
pub(crate) const FENCING_MAX: i64 = i64::MAX;

/// Decides an acquire that did not report a grant (the key is held, or the reply could not be
/// trusted) from the row read back after it: ours and in force → the grant it holds; someone
/// else's → held; an exhausted counter → corrupt; free or expired → held with no time left, so
/// the protocol retries at once.
pub(crate) fn outcome_from_record(
    backend: &'static str,
    holder: &lease_core::HolderToken,
    record: Option<LeaseRecord>,
) -> Result<lease_core::AcquireOutcome, BackendError> {
    use lease_core::{AcquireOutcome, Grant};
    let Some(record) = record else {
        return Ok(AcquireOutcome::Held(None));
    };
    if record.is_held_by(holder) {
        let ttl = record.ttl.ok_or_else(|| {
            BackendError::corrupt_record(backend, format!("lease {} has no TTL", record.key))
        })?;
        return Ok(AcquireOutcome::Acquired(Grant::new(record.fencing, ttl)));
    }
    if record.state != RecordState::Held {
        if record.fencing.get() >= FENCING_MAX as u64 {
            return Err(BackendError::corrupt_record(
                backend,
                format!(
                    "the fencing counter of lease {} is exhausted ({}): no larger token can be issued",
                    record.key, record.fencing
                ),
            ));
        }
        return Ok(AcquireOutcome::Held(Some(Box::new(
            record.with_expires_in(Duration::ZERO),
        ))));
    }
    Ok(AcquireOutcome::Held(Some(Box::new(record))))
}

/// The distinct leases of a `renew_many` call, and for each request the index of its lease. A
/// pair asked for twice is renewed once, with the TTL of its last request, and every request for
/// it reports the TTL that was stored. Requests with a TTL out of range are left out (`None`, and
/// answered with an error by [`renew_results`]).
pub(crate) fn distinct_leases(
    requests: &[lease_core::RenewRequest],
) -> (Vec<BatchLease<'_>>, Vec<Option<usize>>) {
    let mut index: std::collections::HashMap<(&str, lease_core::HolderToken), usize> =
        std::collections::HashMap::with_capacity(requests.len());
    let mut leases: Vec<BatchLease<'_>> = Vec::with_capacity(requests.len());
    let mut slots = Vec::with_capacity(requests.len());
    for r in requests {
        if base_capabilities().check_ttl(r.ttl).is_err() {
            slots.push(None);
            continue;
        }
        let slot = match index.entry((r.key.as_str(), r.holder)) {
            std::collections::hash_map::Entry::Occupied(e) => {
                leases[*e.get()].ttl_ms = ttl_ms(r.ttl);
                *e.get()
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(leases.len());
                leases.push(BatchLease {
                    key: r.key.as_str(),
                    holder: r.holder.to_string(),
                    ttl_ms: ttl_ms(r.ttl),
                });
                leases.len() - 1
            }
        };
        slots.push(Some(slot));
    }
    (leases, slots)
}

/// The `(name, holder, ttl_ms)` columns of the rows a batched renewal read back (a value of the
/// wrong type is a decode error, which [`classify`] calls a corrupt record).
pub(crate) fn renewed_columns<R>(rows: &[R]) -> Result<Vec<(String, String, i64)>, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect()
}

/// [`Renewed`](crate::dialect::Renewed) from the `(name, holder, ttl_ms)` rows a database returned
/// for the renewed leases of a batch; a row naming no lease of the batch is ignored.
pub(crate) fn renewed_from_rows<'a, 'k: 'a>(
    leases: impl ExactSizeIterator<Item = &'a BatchLease<'k>>,
    rows: impl IntoIterator<Item = (String, String, i64)>,
) -> crate::dialect::Renewed {
    let mut renewed = vec![None; leases.len()];
    let index: std::collections::HashMap<(&str, &str), usize> = leases
        .enumerate()
        .map(|(i, l)| ((l.key, l.holder.as_str()), i))
        .collect();
    for (name, holder, ttl) in rows {
        if let Some(&i) = index.get(&(name.as_str(), holder.as_str())) {
            renewed[i] = Some(ttl);
        }
    }
    renewed
}

/// Appends `s` to a JSON string literal being built: quotes, backslashes and control characters
/// escaped (keys and tokens need no escaping, but the encoding must not depend on key validation).
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn push_json_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

/// Builds a JSON array of `[name, holder, ttl_ms]` triples.
#[cfg(feature = "mysql")]
pub(crate) fn json_batch(leases: &[BatchLease<'_>]) -> String {
    let mut out = String::with_capacity(leases.len() * 64 + 2);
    out.push('[');
    for (i, lease) in leases.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("[\"");
        push_json_escaped(&mut out, lease.key);
        out.push_str("\",\"");
        push_json_escaped(&mut out, &lease.holder);
        out.push_str("\",");
        out.push_str(&lease.ttl_ms.to_string());
        out.push(']');
    }
    out.push(']');
    out
}

/// Maps per-request renewal results from each request's lease (from [`distinct_leases`]) and
/// what the database did to that lease.
pub(crate) fn renew_results(
    backend: &'static str,
    requests: &[lease_core::RenewRequest],
    slots: &[Option<usize>],
    renewed: &[Option<i64>],
) -> Vec<Result<lease_core::RenewOutcome, BackendError>> {
    requests
        .iter()
        .zip(slots)
        .map(|(r, slot)| {
            checked_ttl(backend, r.ttl)?;
            Ok(match slot.and_then(|i| renewed.get(i).copied().flatten()) {
                Some(ms) => lease_core::RenewOutcome::Renewed(Duration::from_millis(
                    u64::try_from(ms).unwrap_or(0),
                )),
                None => lease_core::RenewOutcome::NotHeld,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        for ok in ["leases", "_x", "a1", "s.t", &"a".repeat(63)] {
            assert_eq!(TableName::new(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "1a",
            "a-b",
            "a b",
            "a.b.c",
            ".a",
            "a.",
            "x\"; DROP",
            "a`b",
            &"a".repeat(64),
            "é",
        ] {
            let err = TableName::new(bad).unwrap_err();
            assert_eq!(err.field(), "table name", "{bad:?}");
        }
        assert_eq!(prefix_successor(""), None);
        assert_eq!(prefix_successor("a/").as_deref(), Some("a0"));
        assert_eq!(prefix_successor("job_").as_deref(), Some("job`"));
        let t = TableName::new("app.Leases").unwrap();
        assert_eq!(t.quoted('"'), "\"app\".\"Leases\"");
        assert_eq!(t.quoted('`'), "`app`.`Leases`");
        assert_eq!(t.schema(), Some("app"));
        assert_eq!(t.table(), "Leases");
    }

    #[test]
    fn batch_results_follow_each_requests_lease() {
        use lease_core::{HolderToken, RenewOutcome, RenewRequest};
        let key = |k: &str| LeaseKey::new(k).unwrap();
        let (a, b) = (HolderToken::generate(), HolderToken::generate());
        let requests = [
            RenewRequest::new(key("x"), a, Duration::from_secs(10)),
            RenewRequest::new(key("y"), b, Duration::from_secs(10)),
            RenewRequest::new(key("x"), a, Duration::from_secs(20)),
            RenewRequest::new(key("x"), b, Duration::ZERO),
            RenewRequest::new(key("z"), a, Duration::from_secs(10)),
        ];
        let (leases, slots) = distinct_leases(&requests);
        assert_eq!(slots, [Some(0), Some(1), Some(0), None, Some(2)]);
        assert_eq!(leases[0].ttl_ms, 20_000, "the last request's TTL");
        // Rows for x (ours), for y with a stranger's holder, and for a key not asked about.
        let rows = [
            ("x".to_owned(), a.to_string(), 20_000),
            ("y".to_owned(), a.to_string(), 10_000),
            ("w".to_owned(), b.to_string(), 10_000),
        ];
        let renewed = renewed_from_rows(leases.iter(), rows);
        assert_eq!(renewed, [Some(20_000), None, None]);
        let results = renew_results("test", &requests, &slots, &renewed);
        let twenty = Duration::from_secs(20);
        assert!(matches!(results[0], Ok(RenewOutcome::Renewed(t)) if t == twenty));
        assert!(matches!(results[1], Ok(RenewOutcome::NotHeld)));
        assert!(matches!(results[2], Ok(RenewOutcome::Renewed(t)) if t == twenty));
        assert!(results[3].is_err(), "{:?}", results[3]);
        assert!(matches!(results[4], Ok(RenewOutcome::NotHeld)));
    }

    #[test]
    fn scrubs_passwords() {
        let url = "postgres://me:s3cr%21t@db:5432/x";
        let text = scrub("failed for me:s3cr%21t and s3cr!t".into(), url);
        assert!(!text.contains("s3cr"), "{text}");
        assert_eq!(scrub("same".into(), "postgres://me@db/x"), "same");
    }

    #[test]
    fn decodes_defensively() {
        let key = LeaseKey::new("k").unwrap();
        let token = HolderToken::generate();
        let good = || RawRecord {
            holder: Some(token.to_string()),
            holder_meta: Some("me\u{7}".into()),
            fencing: Some(3),
            ttl_ms: Some(1000),
            acquired_at_us: Some(1_700_000_000_000_000),
            remaining_us: Some(500_000),
        };
        let record = good().decode("t", &key).unwrap();
        assert!(record.is_held_by(&token));
        assert_eq!(record.fencing, FencingToken::new(3));
        assert_eq!(record.metadata.unwrap().as_str(), "me?");
        let expired = RawRecord {
            remaining_us: Some(-1),
            ..good()
        }
        .decode("t", &key)
        .unwrap();
        assert_eq!(expired.state, RecordState::Expired);
        let free = RawRecord {
            holder: None,
            ..good()
        }
        .decode("t", &key)
        .unwrap();
        assert_eq!(free.state, RecordState::Free);
        for bad in [
            RawRecord {
                fencing: None,
                ..good()
            },
            RawRecord {
                fencing: Some(-1),
                ..good()
            },
            RawRecord {
                holder: Some("nope".into()),
                ..good()
            },
            RawRecord {
                ttl_ms: None,
                ..good()
            },
            RawRecord {
                ttl_ms: Some(-5),
                ..good()
            },
            RawRecord {
                remaining_us: None,
                ..good()
            },
        ] {
            let err = bad.decode("t", &key).unwrap_err();
            assert_eq!(
                err.kind(),
                lease_core::BackendErrorKind::CorruptRecord,
                "{err}"
            );
        }
    }
}
