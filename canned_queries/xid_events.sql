-- title: XID errors
-- description: NVIDIA XID errors read by the agents from the kernel log (/dev/kmsg), newest first, over the last :hours hours (default 168). :server_id limits to one server. name is NVIDIA's name for the code (docs.nvidia.com/deploy/xid-errors); critical = 1 for the codes that alert (48, 63, 64, 74, 79, 94, 95, 119, 120, 140, 143, 158). ts is UTC epoch s. message is the kernel's line, without its pid=/name= part unless processes are visible to you. A server whose kmsg_state is not ok (see the servers query) cannot report XIDs.
select
  e.ts,
  e.server_id,
  coalesce(s.display_name, s.hostname) as server,
  g.gpu_index,
  g.uuid as gpu_uuid,
  e.pci_bus_id,
  e.xid,
  e.name,
  e.xid in (48, 63, 64, 74, 79, 94, 95, 119, 120, 140, 143, 158) as critical,
  case when :_scope_processes then e.pid end as pid,
  case when :_scope_processes then e.process_name end as process_name,
  case when :_scope_processes then coalesce(e.kernel_line, e.message) else e.message end as message
from xid_events e
join servers s on s.id = e.server_id
left join gpus g on g.id = e.gpu_id
where e.ts >= cast(strftime('%s', 'now') as integer) - cast(coalesce(nullif(:hours, ''), 168) as real) * 3600
  and (coalesce(:server_id, '') = '' or e.server_id = cast(:server_id as integer))
  and (:_scope_all or e.server_id in (select value from json_each(:_scope_servers)))
order by e.ts desc, e.id desc
limit 1000
