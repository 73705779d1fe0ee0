//! Egress as Twilio really behaves: WhatsApp carries one media per message, a conversation
//! message's 1,600 characters include the links we append, media cross between Messaging and
//! Conversations the way each API can take them, back-pressure errors are retried, and a
//! recipient who opted out is not messaged again until they opt in.

use serde_json::{json, Value};

use crate::{
    egress_support::{egress_app, fake_twilio, next_matching, reply_to, EgressPublisher, FROM},
    fake_twilio::{mcs, response_problems, FakeTwilio, Reply, Route},
    helpers::{fixture_tokens, BusTap, TestApp},
    require_broker,
};

const CONVERSATION: &str = "CH00000000000000000000000000000def";

struct Rig {
    app: TestApp,
    fake: FakeTwilio,
    publisher: EgressPublisher,
    status: BusTap,
}

impl Rig {
    async fn start(url: &str, extra: &[(&str, &str)]) -> Rig {
        let fake = fake_twilio().await;
        let app = egress_app(url, &fake, extra).await;
        let status = app.tap("internal.egress.status.v1").await;
        let publisher = EgressPublisher::new(&app).await;
        Rig {
            app,
            fake,
            publisher,
            status,
        }
    }

    /// Publishes `event` and returns its egress outcome.
    async fn send(&mut self, event: &Value) -> Value {
        self.publisher.publish(event).await;
        let id = event["correlationId"].as_str().unwrap().to_owned();
        next_matching(&mut self.status, |s| {
            s["correlationId"] == id.as_str() && s["connector"].is_string()
        })
        .await
    }

    /// Posts an inbound SMS from `from` to our number, signed as Twilio signs it.
    async fn inbound_sms(&self, from: &str, body: &str) {
        let tokens = fixture_tokens();
        let sid = format!("SM{}", uuid::Uuid::new_v4().simple());
        let response = self
            .app
            .post_signed_form(
                "/webhooks/twilio/sms",
                &[
                    ("MessageSid", sid.as_str()),
                    ("AccountSid", tokens.account_sid.as_str()),
                    ("From", from),
                    ("To", FROM),
                    ("Body", body),
                    ("NumMedia", "0"),
                ],
            )
            .await;
        assert_eq!(response.status(), 200);
    }
}

fn with_media(mut event: Value, media: Value) -> Value {
    event["message"]["media"] = media;
    event
}

#[tokio::test]
async fn whatsapp_gets_one_media_per_message() {
    let url = require_broker!();
    let mut rig = Rig::start(&url, &[]).await;
    let event = with_media(
        reply_to("whatsapp:+14155550190", "Three pictures"),
        json!([
            {"url": "https://example.com/1.png", "contentType": "image/png"},
            {"url": "https://example.com/2.png", "contentType": "image/png"},
            {"url": "https://example.com/3.png", "contentType": "image/png"}
        ]),
    );
    let status = rig.send(&event).await;
    assert_eq!(status["status"], "sent", "{status}");
    assert_eq!(status["parts"], 3);
    let created = rig.fake.created(Route::Messages);
    assert_eq!(created.len(), 3);
    for (i, request) in created.iter().enumerate() {
        assert_eq!(
            request.params_named("MediaUrl"),
            vec![format!("https://example.com/{}.png", i + 1).as_str()],
            "one media per WhatsApp message"
        );
        assert_eq!(
            request.param("From"),
            Some(format!("whatsapp:{FROM}").as_str())
        );
    }
    assert_eq!(created[0].param("Body"), Some("Three pictures"));
    assert!(rig.fake.messages().iter().all(|m| m["num_media"] == "1"));
    rig.fake.assert_no_violations();
}

#[tokio::test]
async fn a_conversation_body_stays_within_1600_characters_with_its_links() {
    let url = require_broker!();
    let mut rig = Rig::start(&url, &[]).await;
    let text = "x".repeat(1590);
    let link = "https://example.com/a-picture-with-a-long-name.png";
    let event = with_media(
        reply_to(CONVERSATION, &text),
        json!([{"url": link, "contentType": "image/png"}]),
    );
    let status = rig.send(&event).await;
    assert_eq!(status["status"], "sent", "{status}");
    let created = rig.fake.created(Route::ConversationMessages);
    assert_eq!(created.len(), 2, "text and link do not fit in one message");
    assert_eq!(created[0].param("Body"), Some(text.as_str()));
    assert_eq!(created[1].param("Body"), Some(link));
    assert!(created
        .iter()
        .all(|r| r.param("Body").unwrap().chars().count() <= 1600));
    rig.fake.assert_no_violations();

    // Together when they fit.
    let short = with_media(reply_to(CONVERSATION, "Here it is"), json!([{"url": link}]));
    rig.send(&short).await;
    let created = rig.fake.created(Route::ConversationMessages);
    assert_eq!(created.len(), 3);
    assert_eq!(
        created[2].param("Body"),
        Some(format!("Here it is\n{link}").as_str())
    );
}

#[tokio::test]
async fn messaging_media_enter_a_conversation_as_links_not_as_media_sids() {
    let url = require_broker!();
    let mut rig = Rig::start(&url, &[]).await;
    let sms_media = "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME0123456789abcdef0123456789abcdef";
    let event = with_media(
        reply_to(CONVERSATION, "Forwarded"),
        json!([{"url": sms_media, "sid": "ME0123456789abcdef0123456789abcdef", "contentType": "image/jpeg"}]),
    );
    let status = rig.send(&event).await;
    assert_eq!(status["status"], "sent", "{status}");
    let created = rig.fake.created(Route::ConversationMessages);
    assert_eq!(
        created[0].param("MediaSid"),
        None,
        "a Messaging media SID is not a MediaSid"
    );
    assert_eq!(
        created[0].param("Body"),
        Some(format!("Forwarded\n{sms_media}").as_str())
    );

    // Media of a conversation (known by its Media Content Service SID) attach by SID.
    let event = with_media(
        reply_to(CONVERSATION, "Attached"),
        json!([{"sid": "ME11111111111111111111111111111111", "contentType": "image/jpeg"}]),
    );
    rig.send(&event).await;
    let created = rig.fake.created(Route::ConversationMessages);
    assert_eq!(
        created[1].param("MediaSid"),
        Some("ME11111111111111111111111111111111")
    );
    assert_eq!(created[1].param("Body"), Some("Attached"));
}

#[tokio::test]
async fn conversation_media_known_only_by_sid_is_resolved_to_a_url_for_an_mms() {
    let url = require_broker!();
    let fake = fake_twilio().await;
    let mcs_base = format!("{}{}", fake.base_url, mcs::PREFIX);
    let sid = "ME22222222222222222222222222222222";
    fake.seed_mcs_media(sid, "image/png");
    let app = egress_app(
        &url,
        &fake,
        &[
            (
                "TWILIO_CHAT_SERVICE_SID",
                "IS00000000000000000000000000000001",
            ),
            ("TWILIO_MCS_BASE_URL", &mcs_base),
        ],
    )
    .await;
    let mut rig = Rig {
        status: app.tap("internal.egress.status.v1").await,
        publisher: EgressPublisher::new(&app).await,
        app,
        fake,
    };
    let event = with_media(
        reply_to("+14155550191", "From the conversation"),
        json!([{"sid": sid, "contentType": "image/png"}]),
    );
    let status = rig.send(&event).await;
    assert_eq!(status["status"], "sent", "{status}");
    let created = rig.fake.created(Route::Messages);
    assert_eq!(
        created[0].params_named("MediaUrl"),
        vec![mcs::temporary_url(sid).as_str()]
    );
    let lookups: Vec<_> = rig
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with(mcs::PREFIX))
        .collect();
    assert_eq!(lookups.len(), 1);
    assert!(lookups[0].path.ends_with(&format!(
        "/v1/Services/IS00000000000000000000000000000001/Media/{sid}"
    )));

    // Unknown media cannot be resolved: the event is dead-lettered, nothing is sent.
    let event = with_media(
        reply_to("+14155550191", "Lost"),
        json!([{"sid": "ME33333333333333333333333333333333"}]),
    );
    let status = rig.send(&event).await;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(rig.fake.created(Route::Messages).len(), 1);
}

#[tokio::test]
async fn a_full_sender_queue_is_back_pressure_and_is_retried() {
    let url = require_broker!();
    let mut rig = Rig::start(&url, &[]).await;
    rig.fake.enqueue(
        Route::Messages,
        Reply::TwilioError {
            status: 400,
            code: 21611,
            message: "This 'From' number has exceeded the maximum number of queued messages".into(),
        },
    );
    let status = rig.send(&reply_to("+14155550192", "Eventually")).await;
    assert_eq!(status["status"], "sent", "{status}");
    assert_eq!(status["attempts"], 2);
    assert_eq!(rig.fake.created(Route::Messages).len(), 1);
    assert!(
        rig.fake.requests_to(Route::ListMessages).is_empty(),
        "a refusal created nothing: no lookup"
    );
}

#[tokio::test]
async fn an_opted_out_recipient_is_not_messaged_again_until_they_opt_in() {
    let url = require_broker!();
    let mut rig = Rig::start(&url, &[]).await;
    let recipient = "+14155550193";
    rig.fake.enqueue(
        Route::Messages,
        Reply::TwilioError {
            status: 400,
            code: 21610,
            message: "Attempt to send to unsubscribed recipient".into(),
        },
    );
    let first = rig.send(&reply_to(recipient, "One")).await;
    assert_eq!(first["status"], "opted_out", "{first}");
    assert_eq!(rig.fake.requests_to(Route::Messages).len(), 1);

    // Remembered: Twilio is not called again.
    let second = rig.send(&reply_to(recipient, "Two")).await;
    assert_eq!(second["status"], "opted_out", "{second}");
    assert_eq!(rig.fake.requests_to(Route::Messages).len(), 1);

    // Other recipients are not affected.
    let other = rig.send(&reply_to("+14155550194", "Hi")).await;
    assert_eq!(other["status"], "sent", "{other}");

    // START opts in again.
    rig.inbound_sms(recipient, "START").await;
    let third = rig.send(&reply_to(recipient, "Welcome back")).await;
    assert_eq!(third["status"], "sent", "{third}");

    // An inbound STOP opts out before Twilio has to refuse anything.
    rig.inbound_sms(recipient, "stop").await;
    let fourth = rig.send(&reply_to(recipient, "Still there?")).await;
    assert_eq!(fourth["status"], "opted_out", "{fourth}");
    assert_eq!(rig.fake.created(Route::Messages).len(), 2);
}

#[tokio::test]
async fn the_conversation_message_list_the_fake_answers_is_spec_shaped() {
    let url = require_broker!();
    let mut rig = Rig::start(&url, &[]).await;
    rig.send(&reply_to(CONVERSATION, "listed")).await;
    let client = reqwest::Client::new();
    let tokens = fixture_tokens();
    let page: Value = client
        .get(format!(
            "{}/v1/Conversations/{CONVERSATION}/Messages?Order=desc&PageSize=5",
            rig.fake.base_url
        ))
        .basic_auth(&tokens.account_sid, Some(&tokens.primary_auth_token))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        response_problems(Route::ListConversationMessages, &page),
        Vec::<String>::new()
    );
    assert_eq!(page["messages"][0]["body"], "listed");
}
