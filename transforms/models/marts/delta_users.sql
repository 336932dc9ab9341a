-- The users an incremental build rebuilt: publish replaces exactly their rows of the per-user marts.
-- Empty on a whole build (publish then replaces every mart whole).
select distinct user_id
from {{ ref('int_touched_users') }}
{% if not delta() %}where false{% endif %}
