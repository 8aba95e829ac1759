# The seed's naive Ruby code, for TestInteropRace: find, else create, then
# update; no lock. Not an example to copy: examples/ruby is the cure. It
# runs THREADS x CALLS calls from THREADS threads, each on its own
# connection, on TABLE (payments' columns), every thread walking the KEYS
# keys in step, the worst case for it.
#
#   DATABASE_URL=... ruby naive.rb TABLE OP_PREFIX THREADS CALLS KEYS
#
# It prints "ready" once every thread holds a connection, waits for a line on
# stdin, then runs the calls: each adds 1 to amount_cents and appends its op
# id to data. It prints one line per call: "KEY OP CREATED ID READ CALL_NS
# RETURN_NS", or "ERR KEY OP ERROR_CLASS" for a call that failed.
require "active_record"

table, prefix, threads, calls, nkeys = ARGV
threads, calls, nkeys = Integer(threads), Integer(calls), Integer(nkeys)
ActiveRecord::Base.establish_connection(url: ENV.fetch("DATABASE_URL"), pool: threads)
NaivePayment = Class.new(ActiveRecord::Base) { self.table_name = table; self.primary_key = "id" }

def now = Process.clock_gettime(Process::CLOCK_REALTIME, :nanosecond)

def naive(li, op)
  p = NaivePayment.where(service_id: 1, line_item_id: li).order(:id).first
  created = p.nil?
  p ||= NaivePayment.create!(service_id: 1, line_item_id: li)
  read = p.amount_cents
  p.update!(amount_cents: read + 1, data: (p.data || []) + [op])
  [created, p.id, read]
end

out, mu, ready, go = [], Mutex.new, Queue.new, Queue.new
workers = threads.times.map do |w|
  Thread.new do
    ActiveRecord::Base.connection_pool.with_connection do |c|
      c.execute("SELECT 1")
      ready << w
      go.pop
      calls.times do |i|
        li, op, at = "li_#{i % nkeys}", "#{prefix}#{w}.#{i}", now
        begin
          created, id, read = naive(li, op)
          mu.synchronize { out << "1/#{li} #{op} #{created} #{id} #{read} #{at} #{now}" }
        rescue ActiveRecord::ActiveRecordError => e
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
