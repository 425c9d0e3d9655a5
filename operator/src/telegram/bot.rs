//! The Telegram side: polls the Bot API for taps and commands, sends a message for every
//! request that waits for the owner, edits it once decided, and records decisions in the
//! Permit's status (resourceVersion-guarded merge patch, field manager `oauth3-telegram`,
//! `via: telegram`). Runs only on the leader, one loop, so updates and requests are handled in
//! order; stops between steps when leadership is lost.
//!
//! Failures of the Bot API or the Kubernetes API are logged (token redacted) and retried with
//! capped exponential backoff; nothing here panics or ends the operator.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use oauth3_crds::{
    ApprovalDecision, ApprovalVia, CodeReview, Execution, ExecutionPhase, Permit, WebSignInRequest,
};
use serde_json::json;
use teloxide::ApiError;
use teloxide::RequestError;
use teloxide::payloads::{
    AnswerCallbackQuerySetters, EditMessageTextSetters, GetUpdatesSetters, SendMessageSetters,
};
use teloxide::requests::Requester;
use teloxide::types::{
    AllowedUpdate, CallbackQuery, ChatId, InlineKeyboardMarkup, Message, MessageId, UpdateKind,
};

use super::callback_data::decode;
use super::decide::{
    Outcome, code_trusted, on_tap, on_timeout, pending_digest, still_open, telegram_by,
};
use super::message::{
    HELP, closed_text, code_keyboard, code_request_text, decided_note, pending_text,
    permit_keyboard, permit_request_text_facts, sign_in_keyboard, sign_in_text, trust_note,
};
use super::state::{MAX_OPEN, Request, RequestKind, State};
use super::{STATE_CONFIGMAP, TELEGRAM_FIELD_MANAGER, TelegramConfig, TelegramError};
use crate::approval::{Decision, approval_for};
use crate::context::backoff_delay;
use crate::execution::status::{self, Ending, Reason};
use crate::status_write::{Guarded, write_status};
use crate::web_sign_in;

const STATE_KEY: &str = "state.json";
/// Longest Bot API long poll; below the client's own request timeout.
const MAX_LONG_POLL_SECS: u64 = 10;

/// Where the bot works: which Permits it watches and where it keeps its record.
#[derive(Debug, Clone)]
pub struct BotScope {
    /// Watch only this namespace (`None`: all).
    pub namespace: Option<String>,
    /// The operator's namespace, which holds the state ConfigMap.
    pub operator_namespace: String,
}

/// Executions waiting for one code digest under one Permit.
struct Waiting {
    executions: Vec<Execution>,
}

/// The running bot.
pub struct TelegramBot {
    config: TelegramConfig,
    bot: teloxide::Bot,
    client: Client,
    scope: BotScope,
    state: State,
    saved: String,
    failures: u32,
}

/// Runs the bot until `stop` resolves. Never returns early on errors: they are logged and
/// retried with backoff, so a failing Bot API never stops the controllers.
pub async fn run(
    config: TelegramConfig,
    client: Client,
    scope: BotScope,
    stop: impl Future<Output = ()>,
) {
    let mut bot = TelegramBot::new(config, client, scope);
    tokio::pin!(stop);
    tracing::info!(
        chat = bot.config.chat_id,
        owners = ?bot.config.owner_ids,
        api = %bot.config.api_url,
        "Telegram approvals on"
    );
    loop {
        match bot.load_state().await {
            Ok(()) => break,
            Err(e) => {
                let wait = bot.failed(&e);
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    let mut last_pass: Option<Instant> = None;
    loop {
        let started = Instant::now();
        let fetched = tokio::select! {
            () = &mut stop => break,
            r = bot.fetch_updates() => r,
        };
        let mut ok = match fetched {
            Ok(updates) => {
                let any = !updates.is_empty();
                for u in updates {
                    bot.handle_update(u).await;
                }
                bot.save_state().await.map(|()| any)
            }
            Err(e) => Err(e),
        };
        if last_pass.is_none_or(|t| t.elapsed() >= bot.config.poll_interval) {
            last_pass = Some(Instant::now());
            let pass = bot.pass().await;
            let saved = bot.save_state().await;
            ok = ok.and_then(|any| pass.and(saved).map(|()| any));
        }
        let wait = match ok {
            Ok(any) => {
                bot.failures = 0;
                if any {
                    Duration::ZERO
                } else {
                    bot.config.poll_interval.saturating_sub(started.elapsed())
                }
            }
            Err(e) => bot.failed(&e),
        };
        if !wait.is_zero() {
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
    tracing::info!("Telegram approvals stopped");
}

fn kube_err(step: impl Into<String>) -> impl FnOnce(kube::Error) -> TelegramError {
    let step = step.into();
    move |source| TelegramError::Kube { step, source }
}

fn now() -> Timestamp {
    Timestamp::now()
}

impl TelegramBot {
    /// A bot for `config` that reads and writes through `client`.
    pub fn new(config: TelegramConfig, client: Client, scope: BotScope) -> Self {
        let bot = teloxide::Bot::new(config.token.expose()).set_api_url(config.api_url.clone());
        Self {
            config,
            bot,
            client,
            scope,
            state: State::default(),
            saved: String::new(),
            failures: 0,
        }
    }

    fn failed(&mut self, e: &TelegramError) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff_delay(self.failures);
        tracing::warn!(
            error = %self.config.token.redact(&e.to_string()),
            retry_in = ?wait,
            "Telegram approvals"
        );
        wait
    }

    fn bot_err(&self, method: &'static str) -> impl FnOnce(RequestError) -> TelegramError + '_ {
        move |e| TelegramError::BotApi {
            method,
            message: self.config.token.redact(&e.to_string()),
        }
    }

    fn permits(&self) -> Api<Permit> {
        match &self.scope.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    fn executions(&self) -> Api<Execution> {
        match &self.scope.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    fn state_api(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.scope.operator_namespace)
    }

    async fn load_state(&mut self) -> Result<(), TelegramError> {
        let cm = self
            .state_api()
            .get_opt(STATE_CONFIGMAP)
            .await
            .map_err(kube_err(format!(
                "reading ConfigMap {}/{STATE_CONFIGMAP}",
                self.scope.operator_namespace
            )))?;
        let text = cm
            .and_then(|c| c.data)
            .and_then(|mut d| d.remove(STATE_KEY))
            .unwrap_or_default();
        self.state = if text.is_empty() {
            State::default()
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the Telegram state record is unreadable; starting afresh (earlier buttons no longer count)");
                State::default()
            })
        };
        self.saved = text;
        Ok(())
    }

    async fn save_state(&mut self) -> Result<(), TelegramError> {
        self.state.prune(now().as_second());
        let text = serde_json::to_string(&self.state)
            .map_err(|e| TelegramError::Decision(format!("serialising the state: {e}")))?;
        if text == self.saved {
            return Ok(());
        }
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": STATE_CONFIGMAP, "labels": {"app.kubernetes.io/part-of": "oauth3"}},
            "data": {STATE_KEY: text},
        });
        self.state_api()
            .patch(
                STATE_CONFIGMAP,
                &PatchParams::apply(TELEGRAM_FIELD_MANAGER).force(),
                &Patch::Apply(&cm),
            )
            .await
            .map_err(kube_err(format!(
                "writing ConfigMap {}/{STATE_CONFIGMAP}",
                self.scope.operator_namespace
            )))?;
        self.saved = text;
        Ok(())
    }

    async fn fetch_updates(&mut self) -> Result<Vec<teloxide::types::Update>, TelegramError> {
        let secs = self.config.poll_interval.as_secs().min(MAX_LONG_POLL_SECS);
        let updates = self
            .bot
            .get_updates()
            .offset(self.state.offset)
            .timeout(u32::try_from(secs).unwrap_or(0))
            .allowed_updates([AllowedUpdate::Message, AllowedUpdate::CallbackQuery])
            .await
            .map_err(self.bot_err("getUpdates"))?;
        Ok(updates)
    }

    async fn handle_update(&mut self, update: teloxide::types::Update) {
        let next = i32::try_from(update.id.0)
            .unwrap_or(i32::MAX)
            .saturating_add(1);
        self.state.offset = self.state.offset.max(next);
        match update.kind {
            UpdateKind::CallbackQuery(q) => self.on_callback(q).await,
            UpdateKind::Message(m) => self.on_message(m).await,
            _ => {}
        }
    }

    async fn answer(&self, q: &CallbackQuery, text: &str, alert: bool) {
        if let Err(e) = self
            .bot
            .answer_callback_query(q.id.clone())
            .text(text)
            .show_alert(alert)
            .await
            .map_err(self.bot_err("answerCallbackQuery"))
        {
            tracing::warn!(error = %e, "answering a button tap");
        }
    }

    async fn reply(&self, chat: i64, text: &str) {
        if let Err(e) = self
            .bot
            .send_message(ChatId(chat), text)
            .await
            .map_err(self.bot_err("sendMessage"))
        {
            tracing::warn!(error = %e, "replying to a command");
        }
    }

    async fn on_callback(&mut self, q: CallbackQuery) {
        let user = q.from.id.0;
        let Some((chat, message_id)) = q.message.as_ref().map(|m| (m.chat().id.0, m.id().0)) else {
            self.answer(&q, "This button is not on a message of this bot.", false)
                .await;
            return;
        };
        if !self.config.is_owner(user, chat) {
            tracing::warn!(
                user,
                chat,
                "refused a button tap from a user or chat that is not a configured owner"
            );
            self.answer(
                &q,
                "Only the configured owners can decide oauth3 requests. Nothing was changed.",
                true,
            )
            .await;
            return;
        }
        let Some(tap) = q.data.as_deref().and_then(decode) else {
            self.answer(&q, "Unknown button. Nothing was changed.", false)
                .await;
            return;
        };
        let Some(i) = self.state.tapped(chat, message_id, &tap) else {
            self.answer(
                &q,
                "This request was already decided or is outdated. Nothing was changed.",
                false,
            )
            .await;
            return;
        };
        let req = self.state.requests[i].clone();
        if tap.action.is_open_web() {
            let text = self.open_web(&req, user, chat).await;
            self.answer(&q, &text, false).await;
            return;
        }
        let result = self.decide_tap(&req, tap.action, user).await;
        let note = match result {
            Ok(Some(note)) => note,
            Ok(None) => {
                self.answer(&q, "Nothing was changed.", false).await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, permit = %format!("{}/{}", req.namespace, req.name), "recording a decision from Telegram");
                let text = match e {
                    TelegramError::Conflict(_) => {
                        "The Permit changed while the decision was being recorded. Nothing was written; look again and tap again."
                    }
                    _ => "The decision could not be recorded. Nothing was written; tap again.",
                };
                self.answer(&q, text, true).await;
                return;
            }
        };
        self.state.close(i, note.clone(), now().as_second());
        if let Err(e) = self.save_state().await {
            tracing::warn!(error = %e, "saving the Telegram state");
        }
        self.edit_closed(i).await;
        self.answer(&q, &note, false).await;
    }

    /// Sends `user` a one-time sign-in link to the web page of `req` (tapped in `chat`) and
    /// records its hash on the Permit; returns what the tap's answer says. In a group the link
    /// goes to the owner's private chat with the bot, never to the group.
    async fn open_web(&mut self, req: &Request, user: u64, chat: i64) -> String {
        let Some(base) = self.config.web_url.clone() else {
            return "Web sign-in is not configured (--telegram-web-url). Nothing was changed."
                .into();
        };
        let full = format!("{}/{}", req.namespace, req.name);
        let permit = match self.permit(&req.namespace, &req.name).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, permit = %full, "reading the Permit for a sign-in link");
                return "The link could not be made. Nothing was changed; tap again.".into();
            }
        };
        let waiting = match req.kind {
            RequestKind::Code => match self.waiting_for(req).await {
                Ok(w) => !w.is_empty(),
                Err(e) => {
                    tracing::warn!(error = %e, permit = %full, "listing Executions for a sign-in link");
                    return "The link could not be made. Nothing was changed; tap again.".into();
                }
            },
            RequestKind::Permit => false,
        };
        if let Some(note) = still_open(permit.as_ref(), req, waiting, now()) {
            return format!("No link: {note}");
        }
        let Some(permit) = permit else {
            return "No link: the Permit was deleted.".into();
        };
        let kind = match req.kind {
            RequestKind::Permit => WebSignInRequest::Permit,
            RequestKind::Code => WebSignInRequest::Code,
        };
        let (code, record) = web_sign_in::mint(&telegram_by(user), kind, &req.digest, now());
        let link = web_sign_in::link(&base, &req.namespace, &req.name, &code);
        let Some(keyboard) = sign_in_keyboard(&link) else {
            return "The configured --telegram-web-url does not make a valid link. Nothing was changed.".into();
        };
        if let Err(e) = self
            .patch_permit(&permit, json!({"webSignIn": record}))
            .await
        {
            tracing::warn!(error = %e, permit = %full, "recording a sign-in link");
            return "The link could not be made (the Permit changed). Nothing was changed; tap again.".into();
        }
        // A private chat's id is the user's id; anywhere else, send it to the user alone.
        let to = if chat > 0 {
            chat
        } else {
            i64::try_from(user).unwrap_or(chat)
        };
        let minutes = web_sign_in::LINK_TTL.as_secs() / 60;
        let text = sign_in_text(
            &req.namespace,
            &req.name,
            req.kind == RequestKind::Code,
            minutes,
        );
        match self
            .bot
            .send_message(ChatId(to), text)
            .reply_markup(keyboard)
            .await
            .map_err(self.bot_err("sendMessage"))
        {
            Ok(_) => {
                tracing::info!(permit = %full, by = %record.by, "web sign-in link sent to the owner");
                if to == chat {
                    format!("Sign-in link sent below (one use, {minutes} minutes).")
                } else {
                    format!("Sign-in link sent to you privately (one use, {minutes} minutes).")
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, permit = %full, "sending a sign-in link");
                // The record stays but nobody has its code: it lapses unused.
                "The link could not be sent. If this is a group, start a private chat with the bot first, then tap again.".into()
            }
        }
    }

    /// Computes and writes the outcome of a tap. `Ok(Some(note))` closes the request.
    async fn decide_tap(
        &self,
        req: &Request,
        action: super::callback_data::Action,
        user: u64,
    ) -> Result<Option<String>, TelegramError> {
        let permit = self.permit(&req.namespace, &req.name).await?;
        let waiting = match req.kind {
            RequestKind::Code => self.waiting_for(req).await?,
            RequestKind::Permit => Vec::new(),
        };
        let outcome = on_tap(
            permit.as_ref(),
            req,
            !waiting.is_empty(),
            action,
            user,
            now(),
        )?;
        self.apply(permit.as_ref(), req, &waiting, outcome).await
    }

    /// Writes an outcome. Returns the note that closes the request, or `None` to keep it.
    async fn apply(
        &self,
        permit: Option<&Permit>,
        req: &Request,
        waiting: &[Execution],
        outcome: Outcome,
    ) -> Result<Option<String>, TelegramError> {
        match outcome {
            Outcome::Keep => Ok(None),
            Outcome::Close(note) => Ok(Some(note)),
            Outcome::Approve(approval) => {
                let permit = permit.ok_or_else(|| TelegramError::Conflict(req.name.clone()))?;
                self.patch_permit(permit, json!({"approval": approval}))
                    .await?;
                tracing::info!(permit = %format!("{}/{}", req.namespace, req.name), decision = ?approval.decision, by = %approval.by, "decision recorded from Telegram");
                Ok(Some(decided_note(&approval)))
            }
            Outcome::Trust { list, level } => {
                let permit = permit.ok_or_else(|| TelegramError::Conflict(req.name.clone()))?;
                self.patch_permit(permit, json!({"trustedCode": list}))
                    .await?;
                tracing::info!(permit = %format!("{}/{}", req.namespace, req.name), code = %req.digest, ?level, "code trusted from Telegram");
                Ok(list.first().map(trust_note))
            }
            Outcome::DenyCode { reason, message } => {
                for exec in waiting {
                    self.deny_execution(exec, reason, &message).await?;
                }
                Ok(Some(format!(
                    "Code denied ({}: {message}) at {}",
                    reason.as_str(),
                    now()
                )))
            }
        }
    }

    async fn permit(&self, namespace: &str, name: &str) -> Result<Option<Permit>, TelegramError> {
        Api::<Permit>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(kube_err(format!("reading Permit {namespace}/{name}")))
    }

    /// Executions of `req`'s Permit that wait for its code digest.
    async fn waiting_for(&self, req: &Request) -> Result<Vec<Execution>, TelegramError> {
        let list = Api::<Execution>::namespaced(self.client.clone(), &req.namespace)
            .list(&ListParams::default())
            .await
            .map_err(kube_err(format!(
                "listing Executions in namespace {}",
                req.namespace
            )))?;
        Ok(list
            .items
            .into_iter()
            .filter(|e| {
                awaiting(e) && e.spec.permit_ref == req.name && e.spec.code_digest() == req.digest
            })
            .collect())
    }

    async fn patch_permit(
        &self,
        permit: &Permit,
        status: serde_json::Value,
    ) -> Result<(), TelegramError> {
        let (ns, name) = (permit.namespace().unwrap_or_default(), permit.name_any());
        let api = Api::<Permit>::namespaced(self.client.clone(), &ns);
        match write_status(&api, permit, &status, Some(TELEGRAM_FIELD_MANAGER)).await {
            Ok(Guarded::Written) => Ok(()),
            Ok(Guarded::Conflict | Guarded::Gone) => {
                Err(TelegramError::Conflict(format!("Permit {ns}/{name}")))
            }
            Err(source) => Err(TelegramError::Kube {
                step: format!("recording the decision on Permit {ns}/{name}"),
                source,
            }),
        }
    }

    async fn deny_execution(
        &self,
        exec: &Execution,
        reason: Reason,
        message: &str,
    ) -> Result<(), TelegramError> {
        let (ns, name) = (exec.namespace().unwrap_or_default(), exec.name_any());
        let api = Api::<Execution>::namespaced(self.client.clone(), &ns);
        let value = status::ended(exec, &Ending::denied(reason, message), now());
        match write_status(&api, exec, &value, Some(TELEGRAM_FIELD_MANAGER)).await {
            // Changed meanwhile (launched, deleted): it no longer waits, leave it.
            Ok(_) => Ok(()),
            Err(source) => Err(TelegramError::Kube {
                step: format!("denying Execution {ns}/{name}"),
                source,
            }),
        }
    }

    /// Edits the message of closed request `i` to show how it ended.
    async fn edit_closed(&mut self, i: usize) {
        let Some(req) = self.state.requests.get(i) else {
            return;
        };
        let Some(closed) = &req.closed else {
            return;
        };
        let text = closed_text(req, &closed.note);
        let result = self
            .bot
            .edit_message_text(ChatId(req.chat_id), MessageId(req.message_id), text)
            .reply_markup(InlineKeyboardMarkup::default())
            .await;
        let done = match result {
            Ok(_) => true,
            // Already shows it, or is gone: nothing left to do.
            Err(RequestError::Api(ApiError::MessageNotModified))
            | Err(RequestError::Api(ApiError::MessageToEditNotFound))
            | Err(RequestError::Api(ApiError::MessageCantBeEdited)) => true,
            Err(e) => {
                tracing::warn!(error = %self.config.token.redact(&e.to_string()), "editing a decided request's message; will retry");
                false
            }
        };
        if let Some(c) = self.state.requests[i].closed.as_mut() {
            c.edited = done;
        }
    }

    /// One look at the cluster: closes requests that no longer stand (decided elsewhere,
    /// changed, deleted), times out unanswered ones, sends new requests, retries edits.
    async fn pass(&mut self) -> Result<(), TelegramError> {
        let permits = self
            .permits()
            .list(&ListParams::default())
            .await
            .map_err(kube_err("listing Permits"))?
            .items;
        let execs = self
            .executions()
            .list(&ListParams::default())
            .await
            .map_err(kube_err("listing Executions"))?
            .items;
        let by_name: BTreeMap<(String, String), &Permit> = permits
            .iter()
            .map(|p| ((p.namespace().unwrap_or_default(), p.name_any()), p))
            .collect();
        let mut waiting: BTreeMap<(String, String, String), Waiting> = BTreeMap::new();
        for e in execs.into_iter().filter(awaiting) {
            let key = (
                e.namespace().unwrap_or_default(),
                e.spec.permit_ref.clone(),
                e.spec.code_digest(),
            );
            waiting
                .entry(key)
                .or_insert_with(|| Waiting {
                    executions: Vec::new(),
                })
                .executions
                .push(e);
        }
        let t = now();
        let mut first_error = None;

        // 1. Open requests: still standing? timed out?
        for i in 0..self.state.requests.len() {
            let req = self.state.requests[i].clone();
            if req.closed.is_some() {
                continue;
            }
            let permit = by_name
                .get(&(req.namespace.clone(), req.name.clone()))
                .copied();
            let w = waiting
                .get(&(req.namespace.clone(), req.name.clone(), req.digest.clone()))
                .map(|w| w.executions.as_slice())
                .unwrap_or_default();
            if let Some(note) = still_open(permit, &req, !w.is_empty(), t) {
                self.state.close(i, note, t.as_second());
                continue;
            }
            let outcome = on_timeout(permit, &req, self.config.approval_timeout, t);
            match self.apply(permit, &req, w, outcome).await {
                Ok(Some(note)) => self.state.close(i, note, t.as_second()),
                Ok(None) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }

        // 2. New Permit requests.
        for p in &permits {
            let Some(digest) = pending_digest(p) else {
                continue;
            };
            let uid = p.uid().unwrap_or_default();
            if self
                .state
                .open(RequestKind::Permit, &uid, &digest)
                .is_some()
            {
                continue;
            }
            let facts = crate::plugin::secret_facts(
                &self.client,
                p.namespace().as_deref().unwrap_or_default(),
                &p.spec.secrets,
            )
            .await;
            let text = permit_request_text_facts(p, &digest, &facts, t);
            let keyboard = permit_keyboard(
                &uid,
                &digest,
                &p.spec.valid_for,
                self.config.web_url.is_some(),
            );
            if let Err(e) = self
                .send_request(RequestKind::Permit, p, &digest, text, keyboard)
                .await
            {
                first_error.get_or_insert(e);
                break;
            }
        }

        // 3. New code requests.
        for ((ns, name, digest), w) in &waiting {
            let Some(p) = by_name.get(&(ns.clone(), name.clone())) else {
                continue;
            };
            let uid = p.uid().unwrap_or_default();
            if p.spec.code_review != CodeReview::PerCode
                || code_trusted(p, digest, t).is_some()
                || self.state.open(RequestKind::Code, &uid, digest).is_some()
            {
                continue;
            }
            let names: Vec<String> = w.executions.iter().map(ResourceExt::name_any).collect();
            let first = w.executions.first().map(|e| &e.spec);
            let code = first.map(|s| s.code.as_str()).unwrap_or_default();
            let language = first.map(|s| s.language).unwrap_or_default();
            let text = code_request_text(p, digest, code, language, &names);
            let keyboard = code_keyboard(&uid, digest, self.config.web_url.is_some());
            if let Err(e) = self
                .send_request(RequestKind::Code, p, digest, text, keyboard)
                .await
            {
                first_error.get_or_insert(e);
                break;
            }
        }

        // 4. Messages of closed requests that still show buttons.
        for i in 0..self.state.requests.len() {
            if self.state.requests[i]
                .closed
                .as_ref()
                .is_some_and(|c| !c.edited)
            {
                self.edit_closed(i).await;
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn send_request(
        &mut self,
        kind: RequestKind,
        permit: &Permit,
        digest: &str,
        text: String,
        keyboard: InlineKeyboardMarkup,
    ) -> Result<(), TelegramError> {
        if self.state.open_count() >= MAX_OPEN {
            tracing::warn!(
                permit = %format!("{}/{}", permit.namespace().unwrap_or_default(), permit.name_any()),
                "{MAX_OPEN} requests already wait for the owner on Telegram; this one is sent when some are decided"
            );
            return Ok(());
        }
        let sent = self
            .bot
            .send_message(ChatId(self.config.chat_id), text.clone())
            .reply_markup(keyboard)
            .await
            .map_err(self.bot_err("sendMessage"))?;
        tracing::info!(permit = %format!("{}/{}", permit.namespace().unwrap_or_default(), permit.name_any()), ?kind, %digest, "request sent to the owner on Telegram");
        self.state.requests.push(Request {
            kind,
            namespace: permit.namespace().unwrap_or_default(),
            name: permit.name_any(),
            uid: permit.uid().unwrap_or_default(),
            digest: digest.to_owned(),
            chat_id: self.config.chat_id,
            message_id: sent.id.0,
            sent_at: now().as_second(),
            text,
            closed: None,
        });
        // Recorded right away, so a restart does not send it again.
        self.save_state().await
    }

    async fn on_message(&mut self, m: Message) {
        let Some(text) = m.text() else {
            return;
        };
        if !text.starts_with('/') {
            return;
        }
        let chat = m.chat.id.0;
        let user = m.from.as_ref().map_or(0, |u| u.id.0);
        if !self.config.is_owner(user, chat) {
            tracing::warn!(
                user,
                chat,
                "refused a command from a user or chat that is not a configured owner"
            );
            self.reply(
                chat,
                "Only the configured owners can use this bot. Nothing was changed.",
            )
            .await;
            return;
        }
        let mut words = text.split_whitespace();
        let command = words
            .next()
            .unwrap_or_default()
            .split('@')
            .next()
            .unwrap_or_default();
        let args: Vec<&str> = words.collect();
        let answer = match command {
            "/pending" => {
                let open: Vec<&Request> = self
                    .state
                    .requests
                    .iter()
                    .filter(|r| r.closed.is_none())
                    .collect();
                pending_text(&open)
            }
            "/revoke" => match self.revoke(&args, user).await {
                Ok(text) => text,
                Err(e) => {
                    tracing::warn!(error = %e, "revoking from Telegram");
                    format!("Nothing was changed: {e}")
                }
            },
            _ => HELP.to_owned(),
        };
        self.reply(chat, &answer).await;
    }

    async fn revoke(&self, args: &[&str], user: u64) -> Result<String, TelegramError> {
        let usage = || {
            TelegramError::Decision(
                "usage: /revoke <namespace>/<permit> [sha256:<code digest>]".into(),
            )
        };
        let (target, code) = match args {
            [t] => (*t, None),
            [t, c] => (*t, Some(*c)),
            _ => return Err(usage()),
        };
        let (ns, name) = target.split_once('/').ok_or_else(usage)?;
        if self.scope.namespace.as_deref().is_some_and(|w| w != ns) {
            return Err(TelegramError::Decision(format!(
                "namespace {ns} is not managed by this operator"
            )));
        }
        let permit = self
            .permit(ns, name)
            .await?
            .ok_or_else(|| TelegramError::Decision(format!("Permit {ns}/{name} not found")))?;
        let by = telegram_by(user);
        if let Some(code) = code {
            let code = code.to_ascii_lowercase();
            let current = permit
                .status
                .as_ref()
                .map(|s| s.trusted_code.clone())
                .unwrap_or_default();
            if !current.iter().any(|t| t.code_digest == code) {
                return Err(TelegramError::Decision(format!(
                    "code {code} is not trusted by Permit {ns}/{name}"
                )));
            }
            let list: Vec<_> = current
                .into_iter()
                .filter(|t| t.code_digest != code)
                .collect();
            self.patch_permit(&permit, json!({"trustedCode": list}))
                .await?;
            tracing::info!(permit = %format!("{ns}/{name}"), %code, %by, "code trust removed from Telegram");
            return Ok(format!(
                "Trust in code {code} removed from Permit {ns}/{name} by {by}."
            ));
        }
        let approved = pending_digest(&permit).is_none()
            && permit
                .status
                .as_ref()
                .and_then(|s| s.approval.as_ref())
                .is_some_and(|a| a.decision == ApprovalDecision::Approved);
        if !approved {
            return Err(TelegramError::Decision(format!(
                "Permit {ns}/{name} is not approved, so there is nothing to revoke"
            )));
        }
        let approval = approval_for(&permit, Decision::Revoke, &by, ApprovalVia::Telegram, now())
            .map_err(|e| TelegramError::Decision(e.to_string()))?;
        self.patch_permit(&permit, json!({"approval": approval}))
            .await?;
        tracing::info!(permit = %format!("{ns}/{name}"), %by, "Permit revoked from Telegram");
        Ok(format!("Permit {ns}/{name}: {}", decided_note(&approval)))
    }
}

fn awaiting(e: &Execution) -> bool {
    e.status.as_ref().and_then(|s| s.phase) == Some(ExecutionPhase::AwaitingApproval)
}
