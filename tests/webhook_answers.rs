//! Every answer of `POST /v1/webhooks/pim` (SPEC section 2).

use crate::common;

use chrono::Utc;
use common::{Answer, Bridge, Event, Principal, SourceGroup, batch, batch_statuses, single_status};
use reqwest::StatusCode;
use serde_json::json;

fn activation() -> Event {
    Event::activation(&Principal::new(), &SourceGroup::new())
}

async fn send(bridge: &Bridge, event: &Event) -> Answer {
    Answer::read(bridge.webhook(event.body()).await).await
}

#[tokio::test]
async fn new_event_is_accepted_with_202() {
    let bridge = Bridge::start().await;
    let answer = send(&bridge, &activation()).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert_eq!(single_status(&answer.body), "accepted");
}

#[tokio::test]
async fn resent_event_is_a_202_duplicate() {
    let bridge = Bridge::start().await;
    let event = activation();
    assert_eq!(send(&bridge, &event).await.status, StatusCode::ACCEPTED);

    let again = send(&bridge, &event).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
    assert_eq!(single_status(&again.body), "duplicate");
}

#[tokio::test]
async fn duplicate_is_judged_on_parsed_json_not_bytes() {
    let bridge = Bridge::start().await;
    let event = activation();
    assert_eq!(send(&bridge, &event).await.status, StatusCode::ACCEPTED);

    // Same content, other whitespace and key order.
    let pretty = serde_json::to_vec_pretty(&event.json).unwrap();
    let again = Answer::read(bridge.webhook(pretty).await).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
    assert_eq!(single_status(&again.body), "duplicate");
}

#[tokio::test]
async fn same_id_and_status_with_other_content_is_a_409_conflict() {
    let bridge = Bridge::start().await;
    let event = activation();
    assert_eq!(send(&bridge, &event).await.status, StatusCode::ACCEPTED);

    let changed = event.clone().set("/justification", json!("another reason"));
    send(&bridge, &changed).await.assert_problem(StatusCode::CONFLICT, &[]);
}

#[tokio::test]
async fn batch_judges_each_event_alone() {
    let bridge = Bridge::start().await;
    let known = activation();
    assert_eq!(send(&bridge, &known).await.status, StatusCode::ACCEPTED);

    let fresh = activation();
    let conflicting = known.clone().set("/justification", json!("another reason"));
    let too_short = activation().duration("PT1M");
    let answer = bridge.deliver(&[&fresh, &known, &conflicting, &too_short]).await;

    assert_eq!(
        batch_statuses(&answer),
        ["accepted", "duplicate", "conflict", "rejected"],
        "{answer}"
    );
    let events = answer["events"].as_array().unwrap();
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap_or("")).collect();
    assert_eq!(
        ids,
        [fresh.id(), known.id(), conflicting.id(), too_short.id()],
        "events answer in request order with their ids"
    );
    for (i, event) in events.iter().enumerate() {
        let has_problem = event["problem"].is_object();
        assert_eq!(
            has_problem,
            i >= 2,
            "`problem` only on conflict and rejected events: {event}"
        );
    }

    // The accepted one of the batch is now known; the rejected one was not recorded.
    assert_eq!(single_status(&send(&bridge, &fresh).await.body), "duplicate");
}

#[tokio::test]
async fn batch_rejects_an_incomplete_event_and_accepts_the_others() {
    let bridge = Bridge::start().await;
    let complete = activation();
    let incomplete = activation().without("/principalId");
    let answer = bridge.deliver(&[&complete, &incomplete]).await;

    assert_eq!(batch_statuses(&answer), ["accepted", "rejected"], "{answer}");
    let problem = answer["events"][1]["problem"].to_string();
    assert!(problem.contains("principalId"), "problem names the field: {problem}");
}

#[tokio::test]
async fn batch_of_more_than_100_events_is_refused() {
    let bridge = Bridge::start().await;
    let events: Vec<Event> = (0..101).map(|_| activation()).collect();
    let refs: Vec<&Event> = events.iter().collect();
    let body = serde_json::to_vec(&batch(&refs)).unwrap();
    let answer = Answer::read(bridge.webhook(body).await).await;
    assert!(
        answer.status.is_client_error(),
        "101 events answered {}: {}",
        answer.status,
        answer.body
    );
}

#[tokio::test]
async fn malformed_json_is_a_400_problem() {
    let bridge = Bridge::start().await;
    let answer = Answer::read(bridge.webhook(br#"{"id": "x", "action": "#.to_vec()).await).await;
    answer.assert_problem(StatusCode::BAD_REQUEST, &[]);
}

#[tokio::test]
async fn missing_field_is_a_400_problem_naming_the_field() {
    let bridge = Bridge::start().await;
    for (pointer, field) in [
        ("/principalId", "principalId"),
        ("/groupId", "groupId"),
        ("/status", "status"),
        ("/createdDateTime", "createdDateTime"),
        ("/scheduleInfo/expiration/duration", "duration"),
    ] {
        let answer = send(&bridge, &activation().without(pointer)).await;
        answer.assert_problem(StatusCode::BAD_REQUEST, &[field]);
    }
}

#[tokio::test]
async fn activation_without_schedule_info_is_a_400_naming_it() {
    let bridge = Bridge::start().await;
    send(&bridge, &activation().without("/scheduleInfo"))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, &["scheduleInfo"]);
}

#[tokio::test]
async fn missing_signature_is_a_401() {
    let bridge = Bridge::start().await;
    let response = bridge
        .post_webhook(activation().body(), Some("application/json"), None)
        .await;
    Answer::read(response)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, &[]);
}

#[tokio::test]
async fn signature_with_a_wrong_secret_is_a_401() {
    let bridge = Bridge::start().await;
    let body = activation().body();
    let signature = Bridge::sign(&common::random_hex(), Utc::now().timestamp(), &body);
    let response = bridge
        .post_webhook(body, Some("application/json"), Some(signature))
        .await;
    Answer::read(response)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, &[]);
}

#[tokio::test]
async fn signature_over_another_body_is_a_401() {
    let bridge = Bridge::start().await;
    let signature = Bridge::sign(&bridge.secret, Utc::now().timestamp(), &activation().body());
    let response = bridge
        .post_webhook(activation().body(), Some("application/json"), Some(signature))
        .await;
    Answer::read(response)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, &[]);
}

#[tokio::test]
async fn stale_or_future_signature_timestamp_is_a_401() {
    let bridge = Bridge::start().await;
    for offset in [-400, 400] {
        let body = activation().body();
        let signature = Bridge::sign(&bridge.secret, Utc::now().timestamp() + offset, &body);
        let response = bridge
            .post_webhook(body, Some("application/json"), Some(signature))
            .await;
        Answer::read(response)
            .await
            .assert_problem(StatusCode::UNAUTHORIZED, &[]);
    }
}

/// Like every 4xx, a refused signature names what was wrong: the `X-Bridge-Signature` header,
/// whether it is missing, malformed, made with another secret or stale.
#[tokio::test]
async fn a_refused_signature_is_a_401_problem_naming_the_x_bridge_signature_header() {
    let bridge = Bridge::start().await;
    let body = activation().body();
    let now = Utc::now().timestamp();
    for signature in [
        None,
        Some("t=abc".to_string()),
        Some(Bridge::sign(&common::random_hex(), now, &body)),
        Some(Bridge::sign(&bridge.secret, now - 400, &body)),
    ] {
        let response = bridge
            .post_webhook(body.clone(), Some("application/json"), signature.clone())
            .await;
        let answer = Answer::read(response).await;
        answer.assert_problem(StatusCode::UNAUTHORIZED, &["X-Bridge-Signature"]);
        assert_eq!(
            answer.body["field"], "X-Bridge-Signature",
            "{signature:?}: {}",
            answer.body
        );
    }
}

#[tokio::test]
async fn previous_secret_is_accepted_during_rotation() {
    let bridge = Bridge::start().await;
    let body = activation().body();
    let signature = Bridge::sign(&bridge.previous_secret, Utc::now().timestamp(), &body);
    let response = bridge
        .post_webhook(body, Some("application/json"), Some(signature))
        .await;
    let answer = Answer::read(response).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
}

#[tokio::test]
async fn one_valid_among_several_v1_signatures_is_accepted() {
    let bridge = Bridge::start().await;
    let body = activation().body();
    let t = Utc::now().timestamp();
    let wrong = Bridge::sign(&common::random_hex(), t, &body);
    let right = Bridge::sign(&bridge.secret, t, &body);
    let right_v1 = right.split_once(",v1=").unwrap().1;
    let header = format!("{wrong},v1={right_v1}");
    let response = bridge.post_webhook(body, Some("application/json"), Some(header)).await;
    let answer = Answer::read(response).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
}

#[tokio::test]
async fn body_over_one_mebibyte_is_a_413() {
    let bridge = Bridge::start().await;
    let huge = activation().set("/justification", json!("x".repeat(1024 * 1024 + 1)));
    let answer = send(&bridge, &huge).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", answer.body);
    assert!(
        answer.content_type.starts_with("application/problem+json"),
        "413 content type {:?}",
        answer.content_type
    );
}

/// One HTTP/1.1 answer read off a raw connection: its status line, headers and body.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.expect("the answer");
        assert!(
            n > 0,
            "the connection closed before an answer: {}",
            String::from_utf8_lossy(&read)
        );
        read.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&read).to_string();
        let Some(end) = text.find("\r\n\r\n") else { continue };
        let length: usize = text[..end]
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        if read.len() >= end + 4 + length {
            return text;
        }
    }
}

/// A client that sends the whole of a body over the limit reads its 413, and its connection
/// still takes the next request: the refused body is read and dropped while the answer goes out,
/// not left unread (a connection closed with data unread is reset, and the sender sees the reset
/// instead of the 413).
#[tokio::test]
async fn a_body_over_the_limit_sent_whole_reads_its_413_and_the_connection_takes_the_next_request() {
    use tokio::io::AsyncWriteExt;
    let bridge = Bridge::start().await;
    let address = bridge
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut stream = tokio::net::TcpStream::connect(&address).await.expect("connect");
    let body = vec![b'x'; 2 * 1024 * 1024];
    let head = format!(
        "POST /v1/webhooks/pim HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("the head is taken");
    stream.write_all(&body).await.expect("the whole body is taken");
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .expect("the next request is taken");
    let next = read_answer(&mut stream).await;
    assert!(next.starts_with("HTTP/1.1 200"), "{next}");
}

#[tokio::test]
async fn non_json_content_type_is_a_415() {
    let bridge = Bridge::start().await;
    let body = activation().body();
    let signature = Bridge::sign(&bridge.secret, Utc::now().timestamp(), &body);
    let response = bridge.post_webhook(body, Some("text/plain"), Some(signature)).await;
    Answer::read(response)
        .await
        .assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, &[]);
}

#[tokio::test]
async fn activation_shorter_than_five_minutes_is_a_422() {
    let bridge = Bridge::start().await;
    for event in [
        activation().duration("PT1M"),
        activation().duration("PT4M59S"),
        activation().ending_at(Utc::now() + chrono::Duration::minutes(3)),
    ] {
        send(&bridge, &event).await.assert_problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            &["duration", "expiration", "endDateTime", "five minutes", "5 minutes"],
        );
    }
}

#[tokio::test]
async fn activation_of_exactly_five_minutes_is_accepted() {
    let bridge = Bridge::start().await;
    let answer = send(&bridge, &activation().duration("PT5M")).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
}

#[tokio::test]
async fn dynamic_group_is_a_422() {
    let bridge = Bridge::start().await;
    let event = activation().set("/group/membershipRule", json!("user.department -eq \"Sales\""));
    send(&bridge, &event)
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, &["membershipRule"]);
}

#[tokio::test]
async fn on_premises_group_is_a_422() {
    let bridge = Bridge::start().await;
    let event = activation().set("/group/onPremisesSyncEnabled", json!(true));
    send(&bridge, &event)
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, &["onPremisesSyncEnabled"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_cannot_commit_answers_503_with_retry_after_and_nothing_is_half_taken() {
    use sqlx::Connection;
    let bridge = Bridge::start().await;
    // Another writer holds the database: the bridge cannot commit (it waits its busy timeout,
    // or on PostgreSQL its lock timeout).
    let mut pg_holder = None;
    let mut sqlite_holder = None;
    match bridge.database_env().first() {
        Some((_, url)) => {
            let mut holder = sqlx::PgConnection::connect(url).await.expect("open the database");
            sqlx::query("BEGIN").execute(&mut holder).await.expect("begin");
            sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
                .execute(&mut holder)
                .await
                .expect("lock");
            pg_holder = Some(holder);
        }
        None => {
            let url = format!("sqlite://{}", bridge.data_dir.join("scim-bridge.db").display());
            let mut holder = sqlx::SqliteConnection::connect(&url).await.expect("open the database");
            sqlx::query("BEGIN EXCLUSIVE").execute(&mut holder).await.expect("lock");
            sqlite_holder = Some(holder);
        }
    }

    let event = activation();
    let response = bridge.webhook(event.body()).await;
    assert!(
        response.headers().contains_key("retry-after"),
        "{:?}",
        response.headers()
    );
    Answer::read(response)
        .await
        .assert_problem(StatusCode::SERVICE_UNAVAILABLE, &[]);

    if let Some(mut holder) = pg_holder {
        sqlx::query("ROLLBACK").execute(&mut holder).await.expect("unlock");
    }
    if let Some(mut holder) = sqlite_holder {
        sqlx::query("ROLLBACK").execute(&mut holder).await.expect("unlock");
    }
    // Nothing was committed, so the sender's retry is a first delivery, not a duplicate.
    let answer = bridge.deliver(&[&event]).await;
    assert_eq!(single_status(&answer), "accepted");
}

#[tokio::test]
async fn an_end_after_the_year_9999_is_a_400_and_the_rest_of_its_batch_is_taken() {
    let bridge = Bridge::start().await;
    let far = activation().duration("P1000000Y");
    let single = send(&bridge, &far).await;
    single.assert_problem(StatusCode::BAD_REQUEST, &["scheduleInfo.expiration.duration", "9999"]);
    assert_eq!(
        single.body["field"], "scheduleInfo.expiration.duration",
        "{}",
        single.body
    );

    // In a batch beside a removal: that event is rejected, the removal is accepted, and later
    // batches are taken as usual (nothing out of the database's range was stored).
    let granted = activation();
    assert_eq!(send(&bridge, &granted).await.status, StatusCode::ACCEPTED);
    let removal = granted.deactivation();
    let far_again = activation().duration("P1000000Y");
    let answer = bridge.deliver(&[&far_again, &removal]).await;
    assert_eq!(batch_statuses(&answer), ["rejected", "accepted"], "{answer}");
    assert_eq!(
        answer["events"][0]["problem"]["field"], "scheduleInfo.expiration.duration",
        "{answer}"
    );
    let later = bridge.deliver(&[&activation()]).await;
    assert_eq!(batch_statuses(&later), ["accepted"], "{later}");
}

#[tokio::test]
async fn a_store_error_that_a_retry_cannot_fix_is_a_500_without_retry_after() {
    let bridge = Bridge::start().await;
    // The database refuses every write of events the same way, whatever the timing.
    bridge
        .store_execute("ALTER TABLE events RENAME TO events_elsewhere", &[])
        .await;
    let event = activation();
    let response = bridge.webhook(event.body()).await;
    assert!(
        !response.headers().contains_key("retry-after"),
        "{:?}",
        response.headers()
    );
    let answer = Answer::read(response).await;
    answer.assert_problem(StatusCode::INTERNAL_SERVER_ERROR, &[]);
    assert!(!answer.body.to_string().contains("events_elsewhere"), "{}", answer.body);

    bridge
        .store_execute("ALTER TABLE events_elsewhere RENAME TO events", &[])
        .await;
    assert_eq!(single_status(&bridge.deliver(&[&event]).await), "accepted");
}
