# A poller on Payment.with (payment.rb): applies payment events to the
# payments table with WORKERS threads, each on its own connection. Where a
# real poller fetches events from the provider, this one reads them from
# stdin, one JSON object per line:
#   {"event": "ev_1", "service_id": "7", "line_item_id": "li_123", "amount_cents": 1250}
# Each adds amount_cents to the payment and its event id to the list in
# data, once: an event already in the list (a redelivery) is skipped. It
# prints "ready" once every worker has its connection, then one JSON line per
# event; a failed event stops it with exit status 1. WORKERS (default 4)
# must be a positive whole number: otherwise it exits with status 2.
# Without DATABASE_URL (or with it empty) it connects as psql does: with the
# PG* variables (PGHOST, PGPORT, PGUSER, PGDATABASE, ...) and libpq's
# defaults.
#
#   DATABASE_URL=postgres://... ruby poller.rb [WORKERS]
#   DATABASE_URL=postgres://... ruby poller.rb --check-keys testdata/keys.json
require "json"
# ActiveRecord reads DATABASE_URL itself when loaded, and fails on an empty one
URL = ENV.delete("DATABASE_URL").to_s
require_relative "payment"

def now_ns = Process.clock_gettime(Process::CLOCK_REALTIME, :nanosecond)

# Compares the ids paylock_key_id computes and the key strings of
# Payment.paylock_key with the golden keys of testdata/keys.json; prints each
# mismatch and returns 1 if there is one.
def check_keys(path)
  keys = JSON.parse(File.read(path))
  pg = ActiveRecord::Base.connection.raw_connection
  bad = keys.count do |k|
    id = pg.exec_params("SELECT paylock_key_id($1::text, VARIADIC $2::text[])",
                        [k["namespace"], PG::TextEncoder::Array.new.encode(k["parts"])]).getvalue(0, 0).to_s
    key = Payment.paylock_key(k["namespace"], *k["parts"])
    next false if id == k["id_str"] && key == k["key"]
    puts "key #{k["key"]}: paylock_key_id #{id}, paylock_key #{key.inspect}; want #{k["id_str"]} and #{k["key"].inspect}"
    true
  end
  puts "#{keys.size - bad} of #{keys.size} keys match"
  bad.zero? ? 0 : 1
end

def work(events, out, failed)
  while (line = events.pop)
    next unless failed.empty?
    ev = JSON.parse(line)
    log = { "event" => ev["event"], "payment" => "#{ev["service_id"]}/#{ev["line_item_id"]}" }
    start = now_ns
    begin
      p = Payment.with(service_id: ev["service_id"], line_item_id: ev["line_item_id"]) do |payment|
        applied = payment.data || []
        if applied.include?(ev["event"])
          log["skipped"] = "already applied"
          next
        end
        log["amount_before"] = payment.amount_cents
        payment.amount_cents += ev["amount_cents"]
        payment.data = applied + [ev["event"]]
      end
    rescue StandardError => e
      failed << e
      warn "poller: event #{ev["event"]}: #{e.class}: #{e.message}"
      next
    end
    log.merge!("payment_id" => p.id, "created" => p.created?, "amount_cents" => p.amount_cents,
               "started_ns" => start, "finished_ns" => now_ns)
    out.synchronize { $stdout.puts(JSON.generate(log)) }
  end
end

arg = ARGV[0] == "--check-keys" ? "1" : ARGV[0] || "4"
unless arg.match?(/\A[0-9]+\z/) && arg.to_i >= 1
  # with no worker every event would be read and none applied
  warn "poller: WORKERS #{arg.inspect} is not a positive whole number"
  exit 2
end
workers = arg.to_i
# no URL: ActiveRecord passes libpq no parameter, so PG* and libpq's defaults apply
ActiveRecord::Base.establish_connection(**(URL.empty? ? { adapter: "postgresql" } : { url: URL }), pool: workers)
exit check_keys(ARGV[1]) if ARGV[0] == "--check-keys"

$stdout.sync = true
events, out, failed, connected = Queue.new, Mutex.new, Queue.new, Queue.new
threads = workers.times.map do
  Thread.new do
    ActiveRecord::Base.connection_pool.with_connection do |c|
      c.verify!
      connected << true
      work(events, out, failed)
    end
  rescue StandardError => e
    failed << e
    connected << false
    warn "poller: #{e.class}: #{e.message}"
  end
end
workers.times { connected.pop }
puts "ready"
$stdin.each_line { |line| events << line unless line.strip.empty? }
events.close
threads.each(&:join)
exit(failed.empty? ? 0 : 1)
