# The Ruby side of the cross-language race in payment/interop_test.go. Not an
# example to copy: it drives payment.rb (or the naive code it replaces) from
# several threads, each on its own connection, and prints what each call saw.
#
#   DATABASE_URL=... ruby poller.rb with|naive TABLE OP_PREFIX THREADS CALLS KEYS
#   DATABASE_URL=... ruby poller.rb golden KEYS_JSON
#
# It prints "ready" once every thread holds a connection, waits for a line on
# stdin, then runs THREADS x CALLS calls: each adds 1 to amount_cents and
# appends its op id to data. It prints one line per call:
# "KEY OP CREATED ID READ CALL_NS RETURN_NS", or "ERR KEY OP ERROR_CLASS" for a
# naive call that failed. golden prints, per key of KEYS_JSON,
# "ID_FROM_SQL KEY_STRING".
require "json"
require_relative "payment"

mode = ARGV.shift
ActiveRecord::Base.establish_connection(url: ENV.fetch("DATABASE_URL"), pool: 32)

if mode == "golden"
  conn = ActiveRecord::Base.connection.raw_connection
  JSON.parse(File.read(ARGV[0])).each do |k|
    parts = k["parts"].map { |p| conn.escape_literal(p) + "::text" }
    id = conn.exec_params("SELECT paylock_key_id($1::text, VARIADIC $2::text[])",
                          [k["namespace"], PG::TextEncoder::Array.new.encode(k["parts"])]).getvalue(0, 0)
    id2 = conn.exec(["SELECT paylock_key_id(#{conn.escape_literal(k["namespace"])}", *parts].join(", ") + ")").getvalue(0, 0)
    puts "#{id} #{id2} #{Payment.paylock_key(k["namespace"], *k["parts"])}"
  end
  exit
end

table, prefix, threads, calls, nkeys = ARGV
threads, calls, nkeys = Integer(threads), Integer(calls), Integer(nkeys)
NaivePayment = Class.new(ActiveRecord::Base) { self.table_name = table; self.primary_key = "id" }

def now = Process.clock_gettime(Process::CLOCK_REALTIME, :nanosecond)

# The seed's naive code: find, else create, then update; no lock.
def naive(li, op)
  p = NaivePayment.where(service_id: 1, line_item_id: li).order(:id).first
  created = p.nil?
  p ||= NaivePayment.create!(service_id: 1, line_item_id: li)
  read = p.amount_cents
  p.update!(amount_cents: read + 1, data: (p.data || []) + [op])
  [created, p.id, read]
end

def with(li, op)
  read = nil
  p = Payment.with(line_item_id: li, service_id: 1) do |payment|
    read = payment.amount_cents
    payment.amount_cents += 1
    payment.data = (payment.data || []) + [op]
  end
  [p.created?, p.id, read]
end

out, mu, ready, go = [], Mutex.new, Queue.new, Queue.new
workers = threads.times.map do |w|
  Thread.new do
    ActiveRecord::Base.connection_pool.with_connection do |c|
      c.execute("SELECT 1")
      ready << w
      go.pop
      calls.times do |i|
        # naive: every thread walks the keys in step, the worst case for it
        k = mode == "naive" ? i % nkeys : (w + i) % nkeys
        li, op, at = "li_#{k}", "#{prefix}#{w}.#{i}", now
        begin
          created, id, read = mode == "naive" ? naive(li, op) : with(li, op)
          mu.synchronize { out << "1/#{li} #{op} #{created} #{id} #{read} #{at} #{now}" }
        rescue ActiveRecord::ActiveRecordError => e
          raise unless mode == "naive"
          mu.synchronize { out << "ERR 1/#{li} #{op} #{e.class}" }
        end
      end
    end
  end
end
threads.times { ready.pop }
$stdout.puts "ready"
$stdout.flush
$stdin.gets
threads.times { go << true }
workers.each(&:join)
$stdout.puts out
