# Payment.with for ActiveRecord: the same lock, row and bounds as paylock's
# Go payment.With, so Ruby and Go pollers can update the same payments at
# once. Needs the schema of `paylock migrate` (or `paylock migrate
# --print-sql`): the tables, the unique index and the SQL function
# paylock_key_id. See docs/INTEROP.md.
require "active_record"

class Service < ActiveRecord::Base
end

class Payment < ActiveRecord::Base
  belongs_to :service

  # Go's payment.Table.Ensure, word for word: insert the row if it is missing.
  ENSURE = <<~SQL
    INSERT INTO payments (service_id, line_item_id)
    SELECT $1::bigint, $2::text WHERE NOT EXISTS (SELECT FROM payments WHERE service_id = $1::bigint AND line_item_id = $2::text)
    ON CONFLICT DO NOTHING
  SQL

  # Yields the payment (service_id, line_item_id), created if it is missing,
  # then saves it and commits. Every caller of the same payment, in any
  # process and language that takes the same lock, waits its turn. An
  # exception in the block rolls everything back and is raised again;
  # ActiveRecord::Rollback rolls back too and makes with return nil. The
  # bounds are Go's defaults: wait for the lock without limit (0), let the
  # server end the transaction, and release the lock, once it sits idle for
  # idle_timeout_ms, leave statement_timeout as the server has it (nil).
  # nil for any bound leaves it as the server has it.
  def self.with(line_item_id:, service_id:, lock_timeout_ms: 0, idle_timeout_ms: 60_000, statement_timeout_ms: nil)
    service_id = service_id_text(service_id)
    bounds = { "lock_timeout" => lock_timeout_ms, "idle_in_transaction_session_timeout" => idle_timeout_ms,
               "statement_timeout" => statement_timeout_ms }.compact
    transaction(isolation: :read_committed) do
      pg = connection.raw_connection # the transaction's own connection, BEGIN already sent
      pg.exec("SET TRANSACTION READ WRITE") # whatever default_transaction_read_only says, as Go
      unless bounds.empty? # nil for all three: nothing to set
        pg.exec_params("SELECT " + bounds.keys.each_with_index.map { |k, i| "set_config('#{k}', $#{i + 1}, true)" }.join(", "),
                       bounds.values.map { |v| Integer(v).to_s })
      end
      pg.exec_params("SELECT pg_advisory_xact_lock(paylock_key_id('payments', $1::text, $2::text)) " \
                     "/*paylock_key='#{paylock_key("payments", service_id, line_item_id)}'*/", [service_id, line_item_id])
      created = pg.exec_params(ENSURE, [service_id, line_item_id]).cmd_tuples == 1
      payment = lock("FOR NO KEY UPDATE").order(:id).find_by!(service_id: service_id, line_item_id: line_item_id)
      payment.instance_variable_set(:@created, created)
      yield payment
      payment.save!
      payment
    end
  end

  # The service id as the key holds it: a positive bigint in canonical
  # decimal, "07" as "7". Not Integer(s), which reads "010" as 8, nor
  # Integer(s, 10) or to_i, which take "1_000", " 7" or "7abc".
  def self.service_id_text(service_id)
    s = service_id.is_a?(Integer) ? service_id.to_s : service_id
    unless s.is_a?(String) && s.match?(/\A[0-9]+\z/) && s.to_i.between?(1, 2**63 - 1)
      raise ArgumentError, "service id #{service_id.inspect} is not a positive bigint in decimal"
    end
    s.to_i.to_s
  end

  # lock.Key.String: the key as `paylock locks` reads it from the comment.
  def self.paylock_key(*elems)
    elems.map { |e| e.to_s.b.gsub(/[^A-Za-z0-9_.~-]/n) { |c| format("%%%02X", c.ord) } }.join("/")
  end

  # Whether the Payment.with call that yielded this payment created its row.
  def created? = @created
end
