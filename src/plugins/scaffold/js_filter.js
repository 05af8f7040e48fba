// `{{name}}`: a logstream filter plugin in JavaScript.
//
// Params: { "text": "..." }; a log matches when its message contains `text`
// (case-insensitive). Subscription ids are u64, so they arrive as BigInt.
// Build: npm install && npm run build      Check: logstream plugin check {{name}}.wasm --params '{"text":"error"}'
const subscriptions = new Map();

function parse(params) {
  let p;
  try {
    p = JSON.parse(params);
  } catch (e) {
    throw `params: not JSON: ${e.message}`;
  }
  if (p === null || typeof p !== 'object' || Array.isArray(p)) throw 'params: must be an object';
  for (const key of Object.keys(p)) if (key !== 'text') throw `${key}: unknown field; expected text`;
  if (typeof p.text !== 'string' || p.text.length === 0) throw 'text: must be a non-empty string';
  return p.text.toLowerCase();
}

export const filter = {
  addSubscription(id, params) {
    subscriptions.set(id, parse(params));
  },
  removeSubscription(id) {
    subscriptions.delete(id);
  },
  evaluate(batch) {
    const messages = batch.map((entry) => entry.message.toLowerCase());
    const out = [];
    for (const [id, text] of subscriptions) {
      const entries = [];
      messages.forEach((m, i) => {
        if (m.includes(text)) entries.push(i);
      });
      if (entries.length > 0) out.push({ id, entries });
    }
    return out;
  },
};
