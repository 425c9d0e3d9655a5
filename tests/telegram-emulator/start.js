// Starts the `telegram-test-api` Bot API emulator on 127.0.0.1:<port> for the integration
// tests, and prints "ready <apiURL>" once it listens. Usage: node start.js <port>
//
// The emulator answers a few methods with shapes that differ from the Bot API; a strictly
// typed client rejects those answers. This script brings them in line with the Bot API
// reference and changes nothing else:
// - editMessageText answers with the edited Message (the emulator answers null);
// - answerCallbackQuery answers true (the emulator answers null);
// - sendMessage answers with `date` in seconds (the emulator uses milliseconds);
// - callback_query updates carry `chat_instance` (required by the Bot API, dropped by the
//   emulator).
'use strict';

const sendResultModule = require('telegram-test-api/lib/modules/sendResult');
const { TelegramServer } = require('telegram-test-api/lib/telegramServer');

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node start.js <port>');
  process.exit(2);
}

const original = sendResultModule.sendResult;
sendResultModule.sendResult = (req, res, next) => original(req, res, () => {
  const send = res.sendResult;
  res.sendResult = (data) => send(conform(req, data));
  next();
});

function conform(req, data) {
  if (!data || typeof data !== 'object' || data.ok !== true) {
    return data;
  }
  // Bot API method names are case-insensitive (some clients send `EditMessageText`).
  const method = req.path.split('/').pop().toLowerCase();
  if (method === 'editmessagetext' && data.result === null) {
    return {
      ok: true,
      result: {
        message_id: Number(req.body.message_id),
        date: Math.floor(Date.now() / 1000),
        chat: { id: Number(req.body.chat_id), type: 'private', first_name: 'Owner' },
        text: req.body.text,
      },
    };
  }
  if (method === 'answercallbackquery' && data.result === null) {
    return { ok: true, result: true };
  }
  if (method === 'sendmessage' && data.result && data.result.date > 1e11) {
    return { ok: true, result: { ...data.result, date: Math.floor(data.result.date / 1000) } };
  }
  return data;
}

const formatUpdate = TelegramServer.formatUpdate;
TelegramServer.formatUpdate = (update) => {
  const formatted = formatUpdate(update);
  if (formatted.callback_query) {
    const chat = formatted.callback_query.message && formatted.callback_query.message.chat;
    formatted.callback_query.chat_instance = String(chat ? chat.id : 0);
  }
  return formatted;
};

const server = new TelegramServer({ port, host: '127.0.0.1', storeTimeout: 3600 });
server.start().then(() => {
  console.log(`ready ${server.config.apiURL}`);
});
process.on('SIGTERM', () => server.stop().then(() => process.exit(0)));
