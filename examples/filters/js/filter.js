// A logstream filter in JavaScript: `field-equals`.
//
// Params: { "field": "region", "value": "eu" }
// A log matches when its pass-through field `field` (any field other than the standard
// ones, carried in `extra`) equals `value` (a string, number, boolean or null).
// Built by build.mjs into a WASI component implementing world `filter-plugin` of
// wit/plugin.wit. Subscription ids are u64, so they arrive as BigInt.
import { log } from 'logstream:plugin/host@0.1.0';

const subscriptions = new Map(); // id (BigInt) -> { field, value }

function parse(params) {
  let p;
  try {
    p = JSON.parse(params);
  } catch (e) {
    throw `params: not JSON: ${e.message}`;
  }
  if (p === null || typeof p !== 'object' || Array.isArray(p)) throw 'params: must be an object';
  for (const key of Object.keys(p)) {
    if (key !== 'field' && key !== 'value') throw `${key}: unknown field; expected field or value`;
  }
  if (typeof p.field !== 'string' || p.field.length === 0) throw 'field: must be a non-empty string';
  if (!('value' in p) || (typeof p.value === 'object' && p.value !== null)) {
    throw 'value: must be a string, number, boolean or null';
  }
  return { field: p.field, value: p.value };
}

export const filter = {
  addSubscription(id, params) {
    subscriptions.set(id, parse(params));
    log('debug', `subscription ${id} added`);
  },

  removeSubscription(id) {
    subscriptions.delete(id);
  },

  evaluate(batch) {
    // Parse each entry's pass-through fields once, for all subscriptions.
    const extras = batch.map((entry) => {
      try {
        return JSON.parse(entry.extra);
      } catch {
        return {};
      }
    });
    const out = [];
    for (const [id, { field, value }] of subscriptions) {
      const entries = [];
      extras.forEach((extra, i) => {
        if (Object.prototype.hasOwnProperty.call(extra, field) && extra[field] === value) entries.push(i);
      });
      if (entries.length > 0) out.push({ id, entries });
    }
    return out;
  },
};
