-- Guest checkouts are limited per client address only when the address is known.
--
-- begin_checkout counts a guest's checkout under 'ip:' || coalesce(p_client_ip, 'unknown'). Supabase
-- documents no header that carries the client's address, so a deployment that names none
-- (CLIENT_IP_HEADER unset) sends no address at all, and every guest would then share the one
-- 'ip:unknown' bucket: 30 checkouts a minute would stop everyone. That bucket is no longer counted; the
-- function logs each checkout it skips the limit for (guest-checkout, "no client address"), and the
-- per-email limit still applies.
create or replace function private.take_rate_limit(p_bucket text, p_limit integer) returns void
language plpgsql security definer set search_path = '' as $$
declare
  v_window timestamptz := date_trunc('minute', now());
  v_hits integer;
begin
  if p_bucket = 'ip:unknown' then
    return;
  end if;
  insert into private.rate_limits as r (bucket, window_start, hits) values (p_bucket, v_window, 1)
  on conflict (bucket, window_start) do update set hits = r.hits + 1
  returning r.hits into v_hits;
  if v_hits > p_limit then
    raise exception 'Too many checkouts; try again in a minute' using errcode = 'PT429', hint = 'rate-limited',
      detail = jsonb_build_object('retry_after',
        greatest(1, ceil(extract(epoch from v_window + interval '1 minute' - now()))::integer))::text;
  end if;
end
$$;
