-- title: Server XID errors
-- description: NVIDIA XID errors of one server in the last :hours hours (default 24, at most 17520), oldest first, at most 500: for the XID markers and list of the history page. ts: UTC epoch s (the kernel record's time); gpu_index: null when the PCI bus id names no known GPU; name: NVIDIA's name for the code; critical = 1 for the codes that alert (as in the xid_events query); message: the kernel's text (agent text: show it as text only), without its pid=/name= part unless processes are visible to you.
select
  e.id,
  e.ts,
  e.gpu_id,
  g.gpu_index,
  e.pci_bus_id,
  e.xid,
  e.name,
  e.xid in (48, 63, 64, 74, 79, 94, 95, 119, 120, 140, 143, 158) as critical,
  case when :_scope_processes then e.pid end as pid,
  case when :_scope_processes then e.process_name end as process_name,
  case when :_scope_processes then coalesce(e.kernel_line, e.message) else e.message end as message
from xid_events e
left join gpus g on g.id = e.gpu_id
where e.server_id = cast(:server_id as integer)
  and e.ts >= cast(strftime('%s', 'now') as integer)
             - cast(min(max(coalesce(cast(nullif(:hours, '') as real), 24), 0.1), 17520) * 3600 as integer)
  and (:_scope_all or e.server_id in (select value from json_each(:_scope_servers)))
order by e.ts, e.id
limit 500
