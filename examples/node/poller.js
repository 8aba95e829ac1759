// A poller on withPayment (payment.js): applies payment events to the
// payments table with WORKERS concurrent calls, each on a client of its own
// from one pg.Pool. Where a real poller fetches events from the provider,
// this one reads them from stdin, one JSON object per line:
//   {"event": "ev_1", "service_id": "7", "line_item_id": "li_123", "amount_cents": 1250}
// Each adds amount_cents to the payment and its event id to the list in
// data, once: an event already in the list (a redelivery) is skipped. It
// prints "ready" once every worker has its connection, then one JSON line per
// event; a failed event stops it with exit status 1. WORKERS (default 4)
// must be a positive whole number: otherwise it exits with status 2.
// Without DATABASE_URL (or with it empty) it connects as psql does: with the
// PG* variables (PGHOST, PGPORT, PGUSER, PGDATABASE, ...) and, for the rest,
// node-postgres's defaults, which are not all libpq's (docs/INTEROP.md).
//
//   DATABASE_URL=postgres://... node poller.js [WORKERS]
//   DATABASE_URL=postgres://... node poller.js --check-keys testdata/keys.json
'use strict'
const fs = require('node:fs')
const readline = require('node:readline')
const { Pool } = require('pg')
const { withPayment, keyString } = require('./payment')

const nowNs = () => BigInt(Date.now()) * 1000000n

// Compares the ids paylock_key_id computes and the key strings of keyString
// with the golden keys of testdata/keys.json, by their id_str: JSON.parse
// rounds every id to a double. Prints each mismatch; resolves to 1 if there
// is one.
async function checkKeys (pool, path) {
  const keys = JSON.parse(fs.readFileSync(path, 'utf8'))
  let bad = 0
  for (const k of keys) {
    // pg reads a bigint as a string: exact.
    const { rows } = await pool.query('SELECT paylock_key_id($1::text, VARIADIC $2::text[]) AS id', [k.namespace, k.parts])
    const key = keyString(k.namespace, ...k.parts)
    if (rows[0].id !== k.id_str || key !== k.key) {
      bad++
      console.log(`key ${k.key}: paylock_key_id ${rows[0].id}, keyString ${JSON.stringify(key)}; want ${k.id_str} and ${JSON.stringify(k.key)}`)
    }
  }
  console.log(`${keys.length - bad} of ${keys.length} keys match`)
  return bad ? 1 : 0
}

async function main (argv) {
  const arg = argv[0] === '--check-keys' ? '1' : argv[0] || '4'
  if (!/^[0-9]+$/.test(arg) || Number(arg) < 1) {
    // with no worker every event would be read and none applied
    console.error(`poller: WORKERS ${JSON.stringify(arg)} is not a positive whole number`)
    return 2
  }
  const workers = Number(arg)
  const pool = new Pool({ connectionString: process.env.DATABASE_URL, max: workers })
  pool.on('error', err => console.error(`poller: idle client: ${err.message}`)) // the pool replaces it
  if (argv[0] === '--check-keys') {
    const code = await checkKeys(pool, argv[1])
    await pool.end()
    return code
  }
  const clients = await Promise.all(Array.from({ length: workers }, () => pool.connect()))
  clients.forEach(c => c.release())

  const events = []
  let waiting = [] // the workers waiting for an event
  let ended = false
  let failed = false
  const next = async () => {
    while (events.length === 0 && !ended) await new Promise(resolve => waiting.push(resolve))
    return events.shift()
  }
  const wake = () => { waiting.forEach(resolve => resolve()); waiting = [] }
  const work = async () => {
    for (let line; (line = await next()) !== undefined;) {
      if (failed) continue
      const ev = JSON.parse(line)
      const log = { event: ev.event, payment: `${ev.service_id}/${ev.line_item_id}` }
      const start = nowNs()
      let p
      try {
        p = await withPayment(pool, ev.service_id, ev.line_item_id, payment => {
          const applied = payment.data || []
          if (applied.includes(ev.event)) {
            log.skipped = 'already applied'
            return
          }
          log.amount_before = Number(payment.amount_cents)
          payment.amount_cents += BigInt(ev.amount_cents)
          payment.data = [...applied, ev.event]
        })
      } catch (err) {
        failed = true
        console.error(`poller: event ${ev.event}: ${err.stack}`)
        continue
      }
      // The clock reads whole milliseconds: round the end up.
      Object.assign(log, {
        payment_id: Number(p.id), created: p.created, amount_cents: Number(p.amount_cents),
        started_ns: start.toString(), finished_ns: (nowNs() + 1000000n).toString()
      })
      process.stdout.write(JSON.stringify(log) + '\n')
    }
  }
  const running = Array.from({ length: workers }, work)
  process.stdout.write('ready\n')
  const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
  input.on('line', line => {
    if (line.trim() !== '') events.push(line)
    wake()
  })
  input.on('close', () => {
    ended = true
    wake()
  })
  await Promise.all(running)
  await pool.end()
  return failed ? 1 : 0
}

main(process.argv.slice(2)).then(code => { process.exitCode = code }, err => {
  console.error(`poller: ${err.stack}`)
  process.exitCode = 1
})
