select
    item_id,
    trim(title) as title,
    release_year,
    coalesce(genres, []::varchar[]) as genres,
    coalesce(attributes, '{}')::json as attributes
from {{ source('raw', 'items') }}
