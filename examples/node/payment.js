// withPayment for node-postgres: the same lock, row and bounds as paylock's
// Go payment.With, so Node.js and Go pollers can update the same payments at
// once. Needs pg (npm install pg) and the schema of `paylock migrate` (or
// `paylock migrate --print-sql`): the tables, the unique index and the SQL
// function paylock_key_id. See docs/INTEROP.md.
'use strict'
const { AsyncLocalStorage } = require('node:async_hooks')

// Go's payment.Table.Ensure, word for word: insert the row if it is missing.
const ENSURE = `INSERT INTO payments (service_id, line_item_id)
SELECT $1::bigint, $2::text WHERE NOT EXISTS (SELECT FROM payments WHERE service_id = $1::bigint AND line_item_id = $2::text)
ON CONFLICT DO NOTHING`

const FIND = `SELECT * FROM payments WHERE service_id = $1::bigint AND line_item_id = $2::text
ORDER BY id LIMIT 1 FOR NO KEY UPDATE`

// The service id as the key holds it: a positive bigint in canonical
// decimal, '07' as '7'. Pass it as a string or a BigInt: a Number above
// 2 ** 53 has already lost digits (9007199254740993 is 9007199254740992), so
// it is refused, and so is what Number() or BigInt() would read loosely
// (' 7', '0x10', '1e3').
function serviceIdText (serviceId) {
  if (typeof serviceId === 'number' && !Number.isSafeInteger(serviceId)) {
    throw new RangeError(`service id ${serviceId} is not a safe integer: pass it as a string or a BigInt`)
  }
  const s = typeof serviceId === 'string' ? serviceId : typeof serviceId === 'bigint' || typeof serviceId === 'number' ? String(serviceId) : ''
  if (!/^[0-9]+$/.test(s) || BigInt(s) < 1n || BigInt(s) >= 2n ** 63n) {
    throw new RangeError(`service id ${String(serviceId)} is not a positive bigint in decimal`)
  }
  return BigInt(s).toString()
}

// lock.Key.String: what the /*paylock_key='...'*/ comment carries.
function keyString (namespace, ...parts) {
  return [namespace, ...parts].map(p => [...Buffer.from(p, 'utf8')].map(b =>
    /[A-Za-z0-9_.~-]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : '%' + b.toString(16).toUpperCase().padStart(2, '0')
  ).join('')).join('/')
}

// The keys the current async context holds, to refuse a nested call on one
// of them (Go's ErrReentrant): it would wait for its caller forever.
const held = new AsyncLocalStorage()

class ReentrantError extends Error {}

// withPayment runs await fn(payment, client) on the payment (serviceId,
// lineItemId), created if it is missing, and saves what fn changed:
// amount_cents (a BigInt), currency, status, data. client is the
// transaction's own: what fn writes with it commits or rolls back with the
// payment. It resolves to the payment, with
// payment.created telling whether this call created it. It takes a client of
// its own from pool (a pg.Pool) for one transaction. The bounds are Go's
// defaults: wait for the lock without limit (lockTimeoutMs 0), let the
// server end the transaction, and release the lock, once it sits idle for
// idleTimeoutMs, leave statement_timeout as the server has it (null). null
// for any bound leaves it as the server has it; undefined is Go's default.
async function withPayment (pool, serviceId, lineItemId, fn, { lockTimeoutMs = 0, idleTimeoutMs = 60000, statementTimeoutMs = null } = {}) {
  const sid = serviceIdText(serviceId)
  const key = keyString('payments', sid, lineItemId)
  const outer = held.getStore() || new Set()
  if (outer.has(key)) throw new ReentrantError(`withPayment for ${key} inside its own fn`)
  const bounds = { lock_timeout: lockTimeoutMs, idle_in_transaction_session_timeout: idleTimeoutMs, statement_timeout: statementTimeoutMs }
  const names = Object.keys(bounds).filter(k => bounds[k] !== null)
  const client = await pool.connect()
  let lost = null // the connection's error: the server ended it, say
  const onError = err => { lost = err }
  client.on('error', onError)
  try {
    await client.query('BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE')
    if (names.length > 0) { // null for all three: nothing to set
      await client.query('SELECT ' + names.map((k, i) => `set_config('${k}', $${i + 1}, true)`).join(', '),
        names.map(k => String(Math.trunc(bounds[k]))))
    }
    await client.query(`SELECT pg_advisory_xact_lock(paylock_key_id('payments', $1::text, $2::text)) /*paylock_key='${key}'*/`, [sid, lineItemId])
    const created = (await client.query(ENSURE, [sid, lineItemId])).rowCount === 1
    const row = (await client.query(FIND, [sid, lineItemId])).rows[0]
    const before = { ...row, amount_cents: BigInt(row.amount_cents) } // pg reads a bigint as a string
    const payment = structuredClone(before)
    await held.run(new Set([...outer, key]), () => fn(payment, client))
    for (const k of ['id', 'service_id', 'line_item_id']) {
      if (payment[k] !== before[k]) throw new Error(`fn changed the payment's ${k}`)
    }
    if (['amount_cents', 'currency', 'status'].some(k => payment[k] !== before[k]) ||
        JSON.stringify(payment.data) !== JSON.stringify(before.data)) {
      await client.query(`UPDATE payments SET amount_cents = $1, currency = $2, status = $3, data = $4,
        updated_at = now() WHERE service_id = $5 AND id = $6`, [String(payment.amount_cents), payment.currency,
        payment.status, payment.data === null ? null : JSON.stringify(payment.data), sid, payment.id])
    }
    await client.query('COMMIT')
    return Object.assign(payment, { created })
  } catch (err) {
    if (!lost) await client.query('ROLLBACK').catch(e => { lost = e })
    throw err
  } finally {
    client.removeListener('error', onError)
    client.release(lost || undefined) // a broken client is closed, not pooled
  }
}

module.exports = { withPayment, serviceIdText, keyString, ReentrantError }
