//! The wasm boundary in a real Chromium (wasm-bindgen-test): what the TypeScript shell sees of
//! the core — the options it reads, the JSON of each output, numbers and strings crossing in
//! both directions, the talc allocator under a long run. The shell and the whole client are
//! tested end to end with Playwright (`adapter-wasm/test/`).
//!
//! Run: `CHROMEDRIVER=/usr/bin/chromedriver cargo test -p switchboard-wasm --target
//! wasm32-unknown-unknown` (the runner, `wasm-bindgen-test-runner`, is set in
//! `.cargo/config.toml`).
#![cfg(target_arch = "wasm32")]

use serde_json::Value;
use switchboard_wasm::Core;
use wasm_bindgen::JsCast;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

const WALL: f64 = 1_766_053_800_000.0;

/// A core from options as the TypeScript `ClientOptions` name them (in JSON), turned into the
/// constructor's primitives the way `coreOptions` in `ts/client.ts` does.
fn new_core(options: &str, seed: u32, now: f64) -> Result<Core, wasm_bindgen::JsError> {
    let o: Value = serde_json::from_str(options).expect("JSON options");
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let r = &o["reconnect"];
    let jitter = ["equal", "full", "none", "proportional"]
        .iter()
        .position(|j| r["jitter"] == *j)
        .unwrap_or(0);
    let numbers: Vec<f64> = [
        &o["heartbeatInterval"],
        &o["connectTimeout"],
        &o["probeTimeout"],
        &o["tokenRefreshLead"],
        &o["queue"]["maxMessages"],
        &o["queue"]["maxBytes"],
        &o["queue"]["ttlMs"],
        &o["pingInterval"],
        &r["baseMs"],
        &r["maxMs"],
        &r["maxAttempts"],
        &Value::from(jitter),
        &r["jitterRatio"],
    ]
    .iter()
    .map(|n| n.as_f64().unwrap_or(f64::NAN))
    .collect();
    let cookie_auth = o["cookieAuth"].as_bool().unwrap_or(false);
    let resume = o["resume"].as_bool().unwrap_or(true);
    let strings = (text(&o["url"]), text(&o["conversationId"]), text(&o["definitionId"]));
    let (url, conversation, definition) = strings;
    let token = text(&o["token"]);
    Core::new(
        url,
        conversation,
        definition,
        token,
        cookie_auth,
        resume,
        &numbers,
        0,
        seed,
        now,
        WALL,
    )
}

fn core(options: &str) -> Core {
    new_core(options, 42, 1000.0).expect("valid options")
}

fn drain(core: &mut Core) -> Vec<Value> {
    std::iter::from_fn(|| core.poll())
        .map(|text| serde_json::from_str(&text).expect("every output is JSON"))
        .collect()
}

fn of<'a>(outputs: &'a [Value], t: &str) -> Vec<&'a Value> {
    outputs.iter().filter(|o| o["t"] == t).collect()
}

/// A core with a static token, active on attempt 1 (the first) as session `01A`.
fn active() -> Core {
    let mut core = core(r#"{"url":"ws://127.0.0.1:1/ws","token":"tok","conversationId":"c-1"}"#);
    core.connect(1000.0);
    drain(&mut core);
    core.socket_opened(1010.0, 1);
    core.established(1020.0, 1, "01A", 30_000.0);
    drain(&mut core);
    core
}

#[wasm_bindgen_test]
fn options_without_a_url_are_refused() {
    assert!(new_core("{}", 1, 0.0).is_err());
    assert!(new_core(r#"{"url":""}"#, 1, 0.0).is_err());
}

#[wasm_bindgen_test]
fn connect_opens_one_socket_with_the_token_and_conversation_in_its_url() {
    let mut core = core(r#"{"url":"ws://127.0.0.1:1/ws","token":"a b+/","conversationId":"c-1"}"#);
    core.connect(1000.0);
    let outputs = drain(&mut core);
    let open = of(&outputs, "open");
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["attempt"], 1);
    assert_eq!(open[0]["url"], "ws://127.0.0.1:1/ws?token=a%20b%2B%2F&conversation_id=c-1");
    let states: Vec<_> =
        of(&outputs, "statechange").iter().map(|s| s["newState"].clone()).collect();
    assert_eq!(states, ["connecting"]);
    // The connect timeout is armed, in the shell's monotonic ms.
    assert_eq!(core.deadline(), 11_000.0);
}

#[wasm_bindgen_test]
fn established_makes_it_active_and_a_send_goes_out_as_one_frame() {
    let mut core = active();
    assert_eq!(serde_json::from_str::<Value>(&core.status()).unwrap()["state"], "active");
    let result: Value = serde_json::from_str(&core.send(
        1030.0,
        "data.chat.say",
        r#"{"text":"héllo"}"#,
        None,
        None,
    ))
    .unwrap();
    assert_eq!(result["queued"], false);
    let outputs = drain(&mut core);
    let sent = of(&outputs, "send");
    assert_eq!(sent.len(), 1);
    let frame: Value = serde_json::from_str(sent[0]["frame"].as_str().unwrap()).unwrap();
    assert_eq!(frame["id"], result["id"]);
    assert_eq!(frame["type"], "data.chat.say");
    assert_eq!(frame["conversationId"], "c-1");
    assert_eq!(frame["payload"]["text"], "héllo");
}

#[wasm_bindgen_test]
fn bad_sends_are_refused_with_a_reason() {
    let mut core = active();
    for (message_type, payload) in [("nope", "{}"), ("data.x.y", "[1]"), ("data.x.y", "{")] {
        let result: Value =
            serde_json::from_str(&core.send(1030.0, message_type, payload, None, None)).unwrap();
        assert!(result["error"].is_string(), "{message_type} {payload}: {result}");
    }
    assert!(of(&drain(&mut core), "send").is_empty());
}

#[wasm_bindgen_test]
fn a_ping_is_answered_and_frames_of_an_old_attempt_are_ignored() {
    let mut core = active();
    core.ping(1100.0, 1, "p-1");
    core.ping(1100.0, 0, "p-old");
    let outputs = drain(&mut core);
    let sent = of(&outputs, "send");
    assert_eq!(sent.len(), 1);
    let pong: Value = serde_json::from_str(sent[0]["frame"].as_str().unwrap()).unwrap();
    assert_eq!(pong["type"], "system.pong");
    assert_eq!(pong["correlationId"], "p-1");
}

#[wasm_bindgen_test]
fn application_messages_come_back_with_their_frame_and_subscribers_in_order() {
    let mut core = active();
    let all = core.subscribe("*", false);
    let exact = core.subscribe("data.widget.submit", false);
    let once = core.subscribe("data.widget.*", true);
    assert_eq!(core.subscribe("data.*.submit", false), -1.0, "a bad pattern");
    let frame = r#"{"id":"m1","type":"data.widget.submit","sequence":1,"payload":{}}"#;
    let channel = || Some("conversation:c-1".to_owned());
    let epoch = || Some("e1".to_owned());
    assert!(core.application(
        1100.0,
        1,
        "m1",
        "data.widget.submit",
        1.0,
        frame.to_owned(),
        channel(),
        epoch(),
        4.0
    ));
    assert!(!core.application(
        1100.0,
        1,
        "m2",
        "bad type",
        2.0,
        String::new(),
        None,
        None,
        f64::NAN
    ));
    let outputs = drain(&mut core);
    let messages = of(&outputs, "message");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["frame"], frame);
    assert_eq!(
        messages[0]["subscribers"],
        serde_json::json!([exact as u64, once as u64, all as u64])
    );
    // The once-subscription is gone; a local publish sees the rest, in the same order.
    assert_eq!(core.publish("data.widget.submit"), vec![exact as u32, all as u32]);
    assert!(core.unsubscribe(all));
    assert_eq!(core.publish("data.widget.submit"), vec![exact as u32]);
}

#[wasm_bindgen_test]
fn a_stored_resume_point_is_resumed_after_a_reload() {
    let mut core = active();
    let (channel, epoch) = (Some("conversation:c-1".to_owned()), Some("e1".to_owned()));
    core.application(1100.0, 1, "m7", "data.x.y", 7.0, "{}".to_owned(), channel, epoch, 9.0);
    core.page(1200.0, "freeze");
    let outputs = drain(&mut core);
    let persist = of(&outputs, "persist").last().cloned().cloned().expect("stored on freeze");
    assert_eq!(persist["connectionId"], "01A");
    assert_eq!(persist["lastSequence"], 7);
    assert_eq!(
        persist["positions"],
        serde_json::json!([{"channel": "conversation:c-1", "epoch": "e1", "offset": 9}])
    );

    // The page reloads: a new core from the stored point asks to resume that session.
    let mut reloaded = core_from(&persist);
    reloaded.connect(0.0);
    drain(&mut reloaded);
    reloaded.socket_opened(10.0, 1);
    reloaded.established(20.0, 1, "01B", 30_000.0);
    let outputs = drain(&mut reloaded);
    let resume: Value =
        serde_json::from_str(of(&outputs, "send")[0]["frame"].as_str().unwrap()).unwrap();
    assert_eq!(resume["type"], "system.connection.resume");
    assert_eq!(resume["payload"]["connectionId"], "01A");
    assert_eq!(resume["payload"]["lastSequence"], 7);
    assert_eq!(resume["payload"]["positions"][0]["offset"], 9, "any instance can replay from it");
    reloaded.resumed(30.0, 1, Some("01A".to_owned()), 2.0, true);
    let outputs = drain(&mut reloaded);
    let connected = of(&outputs, "connected");
    assert_eq!(connected[0]["resumed"], true);
    assert_eq!(connected[0]["replayed"], 2);
}

fn core_from(stored: &Value) -> Core {
    let mut core = new_core(r#"{"url":"ws://h/ws","token":"t"}"#, 7, 0.0).unwrap();
    for position in stored["positions"].as_array().into_iter().flatten() {
        let text = |key: &str| position[key].as_str().unwrap_or_default().to_owned();
        let offset = position["offset"].as_f64().unwrap_or(f64::NAN);
        core.restore_position(text("channel"), text("epoch"), offset);
    }
    let text = |key: &str| stored[key].as_str().unwrap_or_default().to_owned();
    let last_sequence = stored["lastSequence"].as_f64().unwrap_or(f64::NAN);
    core.restore(&text("connectionId"), last_sequence, &text("lastMessageId"));
    core
}

#[wasm_bindgen_test]
fn a_lost_socket_reconnects_on_the_cores_schedule_with_a_wall_clock_countdown() {
    let options = r#"{"url":"ws://h/ws","token":"t","reconnect":{"baseMs":1000,"jitter":"none"}}"#;
    let mut core = core(options);
    core.connect(1000.0);
    core.socket_opened(1010.0, 1);
    core.established(1020.0, 1, "01A", 30_000.0);
    drain(&mut core);
    core.socket_closed(2000.0, 1, 1006, String::new());
    let outputs = drain(&mut core);
    let change = of(&outputs, "statechange").last().cloned().cloned().unwrap();
    assert_eq!(change["newState"], "reconnecting");
    assert_eq!(change["willReconnect"], true);
    // 1 s after the loss, as a Date.now() time for the element's countdown.
    assert_eq!(core.deadline(), 3000.0);
    assert_eq!(change["nextRetryAt"], WALL + 2000.0);
    core.timeout(3000.0);
    assert_eq!(of(&drain(&mut core), "open")[0]["attempt"], 2);
}

#[wasm_bindgen_test]
fn a_failed_token_callback_backs_off() {
    let mut core = core(r#"{"url":"ws://h/ws"}"#);
    core.connect(1000.0);
    assert_eq!(of(&drain(&mut core), "token").len(), 1);
    core.token_failed(1100.0);
    let outputs = drain(&mut core);
    assert_eq!(of(&outputs, "statechange")[0]["reason"], "token_unavailable");
    assert!(core.deadline().is_finite());
}

/// Many reconnect cycles and messages through the boundary: the allocator reuses memory
/// rather than growing (the Playwright leak test measures the same from the page).
#[wasm_bindgen_test]
fn memory_stays_flat_over_many_cycles() {
    let mut core = core(r#"{"url":"ws://h/ws","token":"t","reconnect":{"jitter":"none"}}"#);
    let memory = || wasm_bindgen::memory().unchecked_into::<js_sys::WebAssembly::Memory>();
    let cycle = |core: &mut Core, i: u32| {
        let now = 1000.0 + f64::from(i) * 100.0;
        core.reconnect_now(now);
        core.connect(now);
        let attempt = of(&drain(core), "open").last().map(|o| o["attempt"].as_u64().unwrap());
        let attempt = attempt.unwrap_or(0) as u32;
        core.socket_opened(now, attempt);
        core.established(now, attempt, "01A", 30_000.0);
        core.resumed(now, attempt, None, 0.0, true);
        for n in 0..10 {
            let frame = format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(500));
            let id = format!("m{i}-{n}");
            core.application(now, attempt, &id, "data.x.y", f64::NAN, frame, None, None, f64::NAN);
        }
        core.send(now, "data.x.y", r#"{"text":"hi"}"#, None, None);
        drain(core);
        core.socket_closed(now + 1.0, attempt, 1006, String::new());
        drain(core);
    };
    for i in 0..200 {
        cycle(&mut core, i);
    }
    let warm = memory().buffer().unchecked_into::<js_sys::ArrayBuffer>().byte_length();
    for i in 200..2200 {
        cycle(&mut core, i);
    }
    let after = memory().buffer().unchecked_into::<js_sys::ArrayBuffer>().byte_length();
    assert_eq!(after, warm, "wasm memory grew from {warm} to {after} bytes");
}
