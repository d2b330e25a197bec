//! The spans of an acquire call and of a lease's life, captured by a small recording layer: their
//! fields, their nesting (so a tracing exporter shows one lease as one trace), and no secret in
//! any field.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lease_core::{Locker, MemoryBackend};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

/// What the layer saw: a new span, fields recorded later on a span, or an event.
#[derive(Clone, Debug)]
struct Seen {
    kind: &'static str,
    /// The span's name, or the event's message.
    name: String,
    /// Names of the spans it is in, outermost first (for a span: its parents and itself).
    path: Vec<String>,
    fields: Vec<(String, String)>,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

struct Fields(Vec<(String, String)>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
}

fn path<'a, S: LookupSpan<'a>>(
    scope: Option<tracing_subscriber::registry::Scope<'a, S>>,
) -> Vec<String> {
    scope
        .map(|s| s.from_root().map(|span| span.name().to_owned()).collect())
        .unwrap_or_default()
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields(Vec::new());
        attrs.record(&mut fields);
        let seen = Seen {
            kind: "span",
            name: attrs.metadata().name().to_owned(),
            path: path(ctx.span_scope(id)),
            fields: fields.0,
        };
        self.0.lock().unwrap().push(seen);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields(Vec::new());
        values.record(&mut fields);
        let seen = Seen {
            kind: "record",
            name: ctx
                .span(id)
                .map(|s| s.name().to_owned())
                .unwrap_or_default(),
            path: path(ctx.span_scope(id)),
            fields: fields.0,
        };
        self.0.lock().unwrap().push(seen);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields(Vec::new());
        event.record(&mut fields);
        let message = fields
            .0
            .iter()
            .find(|(n, _)| n == "message")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let seen = Seen {
            kind: "event",
            name: message,
            path: path(ctx.event_scope(event)),
            fields: fields.0,
        };
        self.0.lock().unwrap().push(seen);
    }
}

#[test]
fn a_lease_is_one_trace_from_acquire_to_release_with_no_secret_in_it() {
    let recorder = Recorder::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(recorder.clone()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let (holder_token, fencing_token) = runtime.block_on(async {
        let locker = Locker::builder(MemoryBackend::new())
            .ttl(Duration::from_secs(3))
            .build()
            .unwrap();
        let lease = locker.acquire("job").await.unwrap();
        let holder_token = lease.holder_token().to_string();
        // A new key's first token is the clock in µs (docs/protocol.md), not 1.
        let fencing_token = lease.fencing_token().get().to_string();
        tokio::time::sleep(Duration::from_millis(1500)).await; // one renewal, at 1 s
        lease.release().await.unwrap();
        (holder_token, fencing_token)
    });
    let seen = recorder.0.lock().unwrap().clone();
    let find = |kind: &str, name: &str| {
        seen.iter()
            .filter(|s| s.kind == kind && s.name == name)
            .cloned()
            .collect::<Vec<_>>()
    };

    let acquire = find("span", "acquire");
    assert_eq!(acquire.len(), 1, "{seen:#?}");
    assert_eq!(acquire[0].field("key"), Some("job"));
    assert_eq!(acquire[0].field("backend"), Some("memory"));
    let acquire_records = find("record", "acquire");
    let recorded = |name: &str| {
        acquire_records
            .iter()
            .find_map(|r| r.field(name).map(str::to_owned))
    };
    assert_eq!(recorded("outcome").as_deref(), Some("acquired"));
    assert_eq!(recorded("fencing_token"), Some(fencing_token.clone()));
    assert!(recorded("latency_ms").is_some());

    let lease = find("span", "lease");
    assert_eq!(lease.len(), 1, "{seen:#?}");
    assert_eq!(
        lease[0].path,
        ["acquire", "lease"],
        "the lease span is a child of its acquire"
    );
    assert_eq!(lease[0].field("key"), Some("job"));
    assert_eq!(
        lease[0].field("fencing_token"),
        Some(fencing_token.as_str())
    );
    let ended = find("record", "lease");
    assert!(
        ended.iter().any(|r| r.field("outcome") == Some("released")),
        "{ended:#?}"
    );

    // The store requests: the acquire inside the acquire span, the release inside the lease span.
    let calls = find("span", "backend_call");
    let call_path = |op: &str| {
        calls
            .iter()
            .find(|c| c.field("op") == Some(op))
            .map(|c| c.path.clone())
    };
    assert_eq!(call_path("acquire").unwrap(), ["acquire", "backend_call"]);
    assert_eq!(
        call_path("release").unwrap(),
        ["acquire", "lease", "backend_call"]
    );
    assert!(call_path("renew_many").is_some());
    // Each lease records its own renewal in its span (the batch's span is shared by many leases).
    let renewed = find("event", "renewal confirmed");
    assert_eq!(renewed.len(), 1, "{seen:#?}");
    assert_eq!(renewed[0].path, ["acquire", "lease"]);
    let slack_ms: f64 = renewed[0].field("slack_ms").unwrap().parse().unwrap();
    assert!((slack_ms - 1697.0).abs() < 1e-6, "{slack_ms}");

    // The holder token can release the lease: it must not be in any span or event.
    for s in &seen {
        for (name, value) in &s.fields {
            assert!(
                !value.contains(&holder_token),
                "{name} in {s:?} holds the holder token"
            );
        }
    }
}
