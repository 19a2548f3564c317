#!/usr/bin/env bash
# Take a Google Cloud project to a running, least-privilege opcancel, or tear it down again.
# Every step looks before it creates, so a second run changes nothing. ./deploy.sh --help explains.
set -euo pipefail

# Empty arrays under set -u, used throughout, need bash 4.4 (macOS ships 3.2: brew install bash).
if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  printf 'deploy.sh: needs bash 4.4 or later, not %s\n' "$BASH_VERSION" >&2
  exit 2
fi

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly RUNTIME=python312
# The longest Cloud Functions allows an event-driven function; a batch of 100 operations needs room.
readonly TIMEOUT_S=540
# A claim must outlive the worker holding it, plus a minute for the platform to stop a timed-out instance.
readonly LEASE_S=$((TIMEOUT_S + 60))
# A check that arrives early is refused and redelivered by Pub/Sub, so the retry policy is the polling
# clock: the minimum is the first check delay (OPCANCEL_CHECK_INITIAL_DELAY_S) and the maximum the
# longest one (OPCANCEL_CHECK_MAX_DELAY_S), so a deferred check comes back at most one interval late.
readonly MIN_RETRY_DELAY=5s
readonly MAX_RETRY_DELAY=300s
# Waiting out a 300 s check takes about seven refusals; 100 attempts also ride out hours of outage
# (about 8 h at the 300 s cap, inside the subscription's 24 h retention) before dead-lettering.
readonly MAX_DELIVERY_ATTEMPTS=100
readonly DEFAULT_PERMISSIONS=securitycenter.operations.cancel,securitycenter.operations.get
readonly DEPLOY_LABEL=opcancel_deploy
# macOS has shasum where Linux has sha256sum.
if command -v sha256sum >/dev/null; then CHECKSUM=(sha256sum); else CHECKSUM=(shasum -a 256); fi
readonly CHECKSUM
readonly APIS=(
  cloudfunctions.googleapis.com run.googleapis.com eventarc.googleapis.com pubsub.googleapis.com
  firestore.googleapis.com cloudbuild.googleapis.com artifactregistry.googleapis.com
  securitycenter.googleapis.com iam.googleapis.com
)

usage() {
  cat <<'EOF'
Usage: ./deploy.sh --project PROJECT --region REGION [--allowed-parents organizations/ID,...]
                   [--name NAME] [--firestore-location LOCATION] [--role-permissions P,...]
                   [--dry-run] [--destroy]

Deploys opcancel to Cloud Functions (2nd gen): the Pub/Sub topics, two service accounts,
a custom role at each allowed organization, the Firestore database and its TTL policy,
the functions and their subscriptions' retry and dead-letter policies. Safe to run again.

  --project P            Google Cloud project id.       env OPCANCEL_PROJECT, GOOGLE_CLOUD_PROJECT
  --region R             region of the functions, e.g. europe-west1.          env OPCANCEL_REGION
  --allowed-parents L    comma list of organizations/ID the function may act on; each gets a custom
                         role bound to the function's service account. Unset: every organization
                         is allowed and no permission is granted anywhere. env OPCANCEL_ALLOWED_PARENTS
  --name N               prefix of every resource name (default opcancel).      env OPCANCEL_NAME
  --firestore-location L location of a new Firestore database (default: the region).
                                                              env OPCANCEL_FIRESTORE_LOCATION
  --role-permissions P   permissions of the custom role
                         (default securitycenter.operations.cancel,securitycenter.operations.get).
                                                                env OPCANCEL_ROLE_PERMISSIONS
  --dry-run              print every gcloud command, one per line, and run none.
                                                                       env OPCANCEL_DRY_RUN=1
  --destroy              remove what deploy.sh created (not the Firestore database, not the APIs).
                         Deliberately a flag only: a leftover variable must never tear down.
  -h, --help             this text.

A dry run answers every check as for a project where nothing exists yet (with --destroy: where
everything does), and shows values only a real run can read as <placeholders>.
EOF
}

usage_error() {
  printf 'deploy.sh: %s\nRun ./deploy.sh --help for usage.\n' "$1" >&2
  exit 2
}

die() {
  printf 'deploy.sh: %s\n' "$1" >&2
  exit 1
}

note() {
  printf '%s\n' "$*" >&2
}

trim() {
  local text=$1
  text=${text#"${text%%[![:space:]]*}"}
  printf '%s' "${text%"${text##*[![:space:]]}"}"
}

# --- settings: flags override the environment -----------------------------------------------------

project=${OPCANCEL_PROJECT:-${GOOGLE_CLOUD_PROJECT:-}}
region=${OPCANCEL_REGION:-}
name=${OPCANCEL_NAME:-opcancel}
firestore_location=${OPCANCEL_FIRESTORE_LOCATION:-}
permissions_text=${OPCANCEL_ROLE_PERMISSIONS:-$DEFAULT_PERMISSIONS}
parents_given=${OPCANCEL_ALLOWED_PARENTS+yes}
parents_text=${OPCANCEL_ALLOWED_PARENTS-}
destroy=false
case ${OPCANCEL_DRY_RUN:-} in
  "" | 0 | false) dry_run=false ;;
  1 | true) dry_run=true ;;
  *) usage_error "OPCANCEL_DRY_RUN must be 1, true, 0 or false, not '$OPCANCEL_DRY_RUN'" ;;
esac

set_option() {
  case $1 in
    --project) project=$2 ;;
    --region) region=$2 ;;
    --allowed-parents) parents_given=yes parents_text=$2 ;;
    --name) name=$2 ;;
    --firestore-location) firestore_location=$2 ;;
    --role-permissions) permissions_text=$2 ;;
  esac
}

while (($#)); do
  case $1 in
    --project | --region | --allowed-parents | --name | --firestore-location | --role-permissions)
      # A flag followed by another flag is a forgotten value, not a value that starts with dashes.
      if (($# < 2)) || [[ $2 == --* ]]; then
        usage_error "$1 needs a value"
      fi
      set_option "$1" "$2"
      shift 2
      ;;
    --project=* | --region=* | --allowed-parents=* | --name=* | --firestore-location=* | --role-permissions=*)
      set_option "${1%%=*}" "${1#*=}"
      shift
      ;;
    --dry-run) dry_run=true && shift ;;
    --destroy) destroy=true && shift ;;
    -h | --help) usage && exit 0 ;;
    *) usage_error "unknown argument '$1'" ;;
  esac
done

[[ -n $project ]] || usage_error "no project: pass --project or set OPCANCEL_PROJECT or GOOGLE_CLOUD_PROJECT"
[[ $project =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] ||
  usage_error "'$project' is not a project id (6-30 lowercase letters, digits and hyphens, starting with a letter)"
[[ -n $region ]] || usage_error "no region: pass --region or set OPCANCEL_REGION"
[[ $region =~ ^[a-z]+(-[a-z]+)+[0-9]+$ ]] || usage_error "'$region' is not a region such as europe-west1"
[[ $name =~ ^[a-z]([a-z0-9-]{0,19}[a-z0-9])?$ ]] ||
  usage_error "'$name' is not a usable name: 1-21 lowercase letters, digits and hyphens, starting with a letter"
firestore_location=${firestore_location:-$region}
[[ $firestore_location =~ ^[a-z][a-z0-9-]*[0-9]$ ]] ||
  usage_error "'$firestore_location' is not a Firestore location such as europe-west1 or eur3"

parents=()
if [[ -n $parents_given ]]; then
  # Set but blank is most likely a templating slip; allowing every organization would fail open.
  [[ $parents_text =~ [^[:space:],] ]] ||
    usage_error "allowed parents are set but empty; leave them unset to allow every organization"
  IFS=, read -ra entries <<<"${parents_text//$'\n'/,}"
  for entry in "${entries[@]}"; do
    entry=$(trim "$entry")
    [[ -n $entry ]] || continue
    [[ $entry =~ ^organizations/[1-9][0-9]{0,31}$ ]] ||
      usage_error "allowed parent '$entry' is not of the form organizations/DIGITS"
    [[ " ${parents[*]} " == *" $entry "* ]] || parents+=("$entry")
  done
fi

permissions=()
IFS=, read -ra entries <<<"${permissions_text//$'\n'/,}"
for entry in "${entries[@]}"; do
  entry=$(trim "$entry")
  [[ -n $entry ]] || continue
  [[ $entry =~ ^[a-z][a-zA-Z0-9]*(\.[a-zA-Z0-9]+){2}$ ]] ||
    usage_error "'$entry' is not an IAM permission such as securitycenter.operations.cancel"
  permissions+=("$entry")
done
((${#permissions[@]})) || usage_error "the custom role needs at least one permission"

topic_requests=$name-requests
topic_checks=$name-checks
topic_results=$name-results
topic_dead_letter=$name-dead-letter
function_requests=$name-requests
function_checks=$name-checks
function_http=$name-http
runtime_account=$name-function@$project.iam.gserviceaccount.com
trigger_account=$name-trigger@$project.iam.gserviceaccount.com
runtime_member=serviceAccount:$runtime_account
trigger_member=serviceAccount:$trigger_account
role_id=${name//-/_}_operation_canceller
collection=$name-idempotency
if $destroy; then dry_exists=0; else dry_exists=1; fi

$dry_run || command -v gcloud >/dev/null || die "gcloud is not installed: see https://cloud.google.com/sdk/docs/install"

# --- running gcloud -------------------------------------------------------------------------------

quote() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

show() {
  local line="" arg
  for arg in "$@"; do
    line+="${line:+ }$(quote "$arg")"
  done
  printf '%s\n' "$line"
}

# A command that changes something: printed in a dry run, echoed and run otherwise.
change() {
  if $dry_run; then
    show "$@"
    return
  fi
  printf '+ %s\n' "$(show "$@")" >&2
  "$@" || die "failed: $(show "$@")"
}

# IAM is eventually consistent: a binding naming a service account created seconds ago can be refused.
change_retrying() {
  if $dry_run; then
    show "$@"
    return
  fi
  local attempt
  printf '+ %s\n' "$(show "$@")" >&2
  for attempt in 1 2 3 4; do
    "$@" && return
    ((attempt < 4)) || break
    note "retrying in $((attempt * 10)) s: a new identity can take a moment to reach IAM"
    sleep $((attempt * 10))
  done
  die "failed: $(show "$@")"
}

# A read: its output lands in $answer and its status is the command's (a describe fails on what does
# not exist). A dry run answers as for an empty project, or with --destroy as for a complete one.
query() {
  answer=""
  if $dry_run; then
    show "$@"
    return $dry_exists
  fi
  answer=$("$@" 2>/dev/null)
}

# A value later commands need, into $answer; a dry run shows the placeholder given first.
lookup() {
  local placeholder=$1
  shift
  if $dry_run; then
    show "$@"
    answer=$placeholder
    return
  fi
  if ! answer=$("$@") || [[ -z $answer ]]; then
    die "could not read a value deploy.sh needs: $(show "$@")"
  fi
}

sorted_csv() {
  tr ',' '\n' <<<"$1" | sed '/^$/d' | LC_ALL=C sort -u | paste -sd, -
}

joined() {
  local IFS=,
  printf '%s' "$*"
}

binding_filter() {
  printf 'bindings.role="%s" AND bindings.members="%s"' "$1" "$2"
}

# --- pieces shared by deploy and destroy ----------------------------------------------------------

# Prints "DELETED<TAB>PERMISSIONS" into $answer: a deleted custom role keeps its id for weeks.
role_state() {
  query gcloud iam roles describe "$role_id" --organization="$1" \
    --format='value(deleted,includedPermissions.list())'
}

# policy_has MEMBER ROLE GET_IAM_POLICY_COMMAND...: whether the policy already grants ROLE to MEMBER.
policy_has() {
  local member=$1 role=$2
  shift 2
  query "$@" --flatten='bindings[].members' --filter="$(binding_filter "$role" "$member")" \
    --format='value(bindings.role)' && { $dry_run || [[ -n $answer ]]; }
}

# The organizations the deployed function was last given, so narrowing the list narrows the grants.
read_deployed_parents() {
  local entry entries
  deployed_parents=()
  query gcloud functions describe "$function_requests" --project="$project" --region="$region" --gen2 \
    --format='value(serviceConfig.environmentVariables.OPCANCEL_ALLOWED_PARENTS)' || return 0
  IFS=, read -ra entries <<<"$answer"
  for entry in "${entries[@]}"; do
    if [[ $entry =~ ^organizations/[0-9]+$ ]]; then
      deployed_parents+=("$entry")
    fi
  done
}

revoke_organization() {
  local organization=${1#organizations/}
  if policy_has "$runtime_member" "organizations/$organization/roles/$role_id" \
    gcloud organizations get-iam-policy "$organization"; then
    change gcloud organizations remove-iam-policy-binding "$organization" --member="$runtime_member" \
      --role="organizations/$organization/roles/$role_id" --all
  fi
  if role_state "$organization" && [[ ${answer%%$'\t'*} != True ]]; then
    change gcloud iam roles delete "$role_id" --organization="$organization" --quiet
  fi
}

# --- deploy ---------------------------------------------------------------------------------------

check_permissions() {
  local organization=${parents[0]#organizations/} permission level
  # Custom-role permissions are one catalogue, so asking at one organization answers for all.
  if ! query gcloud iam list-testable-permissions "//cloudresourcemanager.googleapis.com/organizations/$organization" \
    --format='value(name,customRolesSupportLevel)'; then
    $dry_run || die "could not list the permissions testable at organizations/$organization"
    return 0
  fi
  for permission in "${permissions[@]}"; do
    level=$(awk -F '\t' -v p="$permission" '$1 == p { print ($2 == "" ? "SUPPORTED" : $2) }' <<<"$answer")
    [[ -n $level ]] || die "IAM does not know the permission $permission at organizations/$organization; \
pass the permissions Security Command Center checks with --role-permissions"
    [[ $level != NOT_SUPPORTED ]] || die "the permission $permission cannot be used in a custom role"
  done
}

enable_apis() {
  local api missing=()
  query gcloud services list --enabled --project="$project" --format='value(config.name)' || true
  for api in "${APIS[@]}"; do
    grep -qx "$api" <<<"$answer" || missing+=("$api")
  done
  if ((${#missing[@]})); then
    change gcloud services enable "${missing[@]}" --project="$project"
  fi
}

ensure_topic() {
  query gcloud pubsub topics describe "$1" --project="$project" --format='value(name)' ||
    change gcloud pubsub topics create "$1" --project="$project"
}

ensure_service_account() {
  query gcloud iam service-accounts describe "$1" --project="$project" --format='value(email)' ||
    change gcloud iam service-accounts create "${1%%@*}" --project="$project" --display-name="$2"
}

ensure_firestore() {
  if query gcloud firestore databases describe --project="$project" --database='(default)' --format='value(type)'; then
    [[ $answer == FIRESTORE_NATIVE ]] ||
      die "the project's (default) database is in $answer; opcancel's store needs Firestore in Native mode"
  else
    change gcloud firestore databases create --project="$project" --database='(default)' \
      --location="$firestore_location" --type=firestore-native
  fi
  query gcloud firestore fields ttls list --project="$project" --database='(default)' \
    --collection-group="$collection" --format='value(name)' || true
  # --async: the policy takes effect in the background, and the store checks expiry on read anyway.
  if [[ $answer != */fields/expire_at ]]; then
    change gcloud firestore fields ttls update expire_at --project="$project" --database='(default)' \
      --collection-group="$collection" --enable-ttl --async
  fi
}

grant_organization() {
  local organization=${1#organizations/} wanted
  wanted=$(sorted_csv "$(joined "${permissions[@]}")")
  if role_state "$organization"; then
    if [[ ${answer%%$'\t'*} == True ]]; then
      change gcloud iam roles undelete "$role_id" --organization="$organization"
    fi
    if [[ $(sorted_csv "${answer#*$'\t'}") != "$wanted" ]]; then
      change gcloud iam roles update "$role_id" --organization="$organization" --permissions="$wanted" --quiet
    fi
  else
    change gcloud iam roles create "$role_id" --organization="$organization" --title="opcancel operation canceller" \
      --description="Cancel and get long-running operations, for the opcancel deployment $name in $project" \
      --permissions="$wanted" --stage=GA --quiet
  fi
  policy_has "$runtime_member" "organizations/$organization/roles/$role_id" \
    gcloud organizations get-iam-policy "$organization" ||
    change_retrying gcloud organizations add-iam-policy-binding "$organization" --member="$runtime_member" \
      --role="organizations/$organization/roles/$role_id" --condition=None
}

# Everything gcloud uploads (see .gcloudignore), so a digest of it tells whether the code changed.
source_listing() {
  cd "$SCRIPT_DIR" &&
    find main.py requirements.txt function -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
    LC_ALL=C sort -z | xargs -0 "${CHECKSUM[@]}"
}

# A deploy rebuilds and rolls out a new revision, so it runs only when the code or the configuration
# changed: their digest is kept in a label, and a function that is not ACTIVE is always redeployed.
deploy_function() {
  local function=$1 entry_point=$2 env_vars sources digest
  shift 2
  env_vars=GOOGLE_CLOUD_PROJECT=$project@OPCANCEL_STORE=firestore@OPCANCEL_FIRESTORE_COLLECTION=$collection
  env_vars+=@OPCANCEL_CHECKS_TOPIC=$topic_checks@OPCANCEL_RESULTS_TOPIC=$topic_results@OPCANCEL_LEASE_S=$LEASE_S
  if ((${#parents[@]})); then
    env_vars+=@OPCANCEL_ALLOWED_PARENTS=$(joined "${parents[@]}")
  fi
  # ^@^ makes @ the separator, because the list of parents is itself comma-separated.
  local command=(gcloud functions deploy "$function" --project="$project" --region="$region" --gen2
    --runtime="$RUNTIME" --source="$SCRIPT_DIR" --entry-point="$entry_point" "$@"
    --service-account="$runtime_account" --timeout="${TIMEOUT_S}s" --no-allow-unauthenticated
    --set-env-vars="^@^$env_vars")
  sources=$(source_listing) || die "could not read the function's source in $SCRIPT_DIR"
  digest=$(printf '%s\n' "$sources" "${command[@]}" | "${CHECKSUM[@]}" | cut -c1-32)
  if query gcloud functions describe "$function" --project="$project" --region="$region" --gen2 \
    --format="value(state,labels.$DEPLOY_LABEL)" && [[ $answer == "ACTIVE"$'\t'"$digest" ]]; then
    return
  fi
  change "${command[@]}" --update-labels="$DEPLOY_LABEL=$digest" --quiet
}

# Eventarc made the function's push subscription; its retry policy is the check delay.
configure_subscription() {
  local function=$1 pubsub_agent=$2 subscription
  lookup "<trigger of $function>" gcloud functions describe "$function" --project="$project" --region="$region" \
    --gen2 --format='value(eventTrigger.trigger)'
  lookup "<subscription of $function>" gcloud eventarc triggers describe "$answer" --project="$project" \
    --format='value(transport.pubsub.subscription)'
  subscription=$answer
  local wanted=$MIN_RETRY_DELAY$'\t'$MAX_RETRY_DELAY$'\t'projects/$project/topics/$topic_dead_letter
  wanted+=$'\t'$MAX_DELIVERY_ATTEMPTS
  local fields=retryPolicy.minimumBackoff,retryPolicy.maximumBackoff
  fields+=,deadLetterPolicy.deadLetterTopic,deadLetterPolicy.maxDeliveryAttempts
  if ! query gcloud pubsub subscriptions describe "$subscription" --project="$project" --format="value($fields)" ||
    [[ $answer != "$wanted" ]]; then
    change gcloud pubsub subscriptions update "$subscription" --project="$project" \
      --min-retry-delay="$MIN_RETRY_DELAY" --max-retry-delay="$MAX_RETRY_DELAY" \
      --dead-letter-topic="projects/$project/topics/$topic_dead_letter" \
      --max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS"
  fi
  # Pub/Sub's own agent moves a message to the dead-letter topic, so it must be able to pull it.
  policy_has "$pubsub_agent" roles/pubsub.subscriber \
    gcloud pubsub subscriptions get-iam-policy "$subscription" --project="$project" ||
    change_retrying gcloud pubsub subscriptions add-iam-policy-binding "$subscription" --project="$project" \
      --member="$pubsub_agent" --role=roles/pubsub.subscriber
}

deploy() {
  local pubsub_agent topic parent previous function event_flags
  lookup "<project-number>" gcloud projects describe "$project" --format='value(projectNumber)'
  pubsub_agent=serviceAccount:service-$answer@gcp-sa-pubsub.iam.gserviceaccount.com
  if ((${#parents[@]})); then
    check_permissions
  else
    note "No allowed parents: the function will accept every organization, and its service account" \
      "gets no Security Command Center permission anywhere; grant one where it should act."
  fi

  enable_apis

  for topic in "$topic_requests" "$topic_checks" "$topic_results" "$topic_dead_letter"; do
    ensure_topic "$topic"
  done
  # Pub/Sub keeps messages only for subscriptions: without this one, dead letters would vanish.
  query gcloud pubsub subscriptions describe "$topic_dead_letter" --project="$project" --format='value(name)' ||
    change gcloud pubsub subscriptions create "$topic_dead_letter" --project="$project" \
      --topic="$topic_dead_letter" --message-retention-duration=7d --expiration-period=never

  ensure_service_account "$runtime_account" "opcancel function ($name)"
  ensure_service_account "$trigger_account" "opcancel Eventarc trigger ($name)"

  ensure_firestore
  policy_has "$runtime_member" roles/datastore.user gcloud projects get-iam-policy "$project" ||
    change_retrying gcloud projects add-iam-policy-binding "$project" --member="$runtime_member" \
      --role=roles/datastore.user --condition=None
  for topic in "$topic_checks" "$topic_results"; do
    policy_has "$runtime_member" roles/pubsub.publisher gcloud pubsub topics get-iam-policy "$topic" \
      --project="$project" ||
      change_retrying gcloud pubsub topics add-iam-policy-binding "$topic" --project="$project" \
        --member="$runtime_member" --role=roles/pubsub.publisher
  done
  policy_has "$pubsub_agent" roles/pubsub.publisher gcloud pubsub topics get-iam-policy "$topic_dead_letter" \
    --project="$project" ||
    change_retrying gcloud pubsub topics add-iam-policy-binding "$topic_dead_letter" --project="$project" \
      --member="$pubsub_agent" --role=roles/pubsub.publisher
  # Push requests carry an identity token for the trigger's account. Projects made before April 2021
  # do not let Pub/Sub mint one unless granted, and granting it on that one account is the narrowest.
  policy_has "$pubsub_agent" roles/iam.serviceAccountTokenCreator \
    gcloud iam service-accounts get-iam-policy "$trigger_account" --project="$project" ||
    change_retrying gcloud iam service-accounts add-iam-policy-binding "$trigger_account" --project="$project" \
      --member="$pubsub_agent" --role=roles/iam.serviceAccountTokenCreator

  for parent in "${parents[@]}"; do
    grant_organization "$parent"
  done
  read_deployed_parents
  for previous in "${deployed_parents[@]}"; do
    [[ " ${parents[*]} " == *" $previous "* ]] || revoke_organization "$previous"
  done

  event_flags=(--trigger-service-account="$trigger_account" --retry --ingress-settings=internal-only)
  deploy_function "$function_requests" on_event --trigger-topic="$topic_requests" "${event_flags[@]}"
  deploy_function "$function_checks" on_event --trigger-topic="$topic_checks" "${event_flags[@]}"
  deploy_function "$function_http" on_http --trigger-http
  for function in "$function_requests" "$function_checks"; do
    # A 2nd gen function is a Cloud Run service of the same name, and that service holds run.invoker.
    policy_has "$trigger_member" roles/run.invoker \
      gcloud run services get-iam-policy "$function" --project="$project" --region="$region" ||
      change_retrying gcloud functions add-invoker-policy-binding "$function" --project="$project" \
        --region="$region" --member="$trigger_member"
    configure_subscription "$function" "$pubsub_agent"
  done

  $dry_run || note "Done. Send a first request with: gcloud pubsub topics publish $topic_requests" \
    "--project=$project --message=organizations/ORGANIZATION_ID/operations/OPERATION_ID"
}

# --- destroy --------------------------------------------------------------------------------------

destroy() {
  local function topic parent account
  read_deployed_parents
  for parent in "${deployed_parents[@]}"; do
    [[ " ${parents[*]} " == *" $parent "* ]] || parents+=("$parent")
  done
  # Deleting a function also deletes its Eventarc trigger, that trigger's subscription and its IAM.
  for function in "$function_requests" "$function_checks" "$function_http"; do
    if query gcloud functions describe "$function" --project="$project" --region="$region" --gen2 \
      --format='value(name)'; then
      change gcloud functions delete "$function" --project="$project" --region="$region" --gen2 --quiet
    fi
  done
  if query gcloud pubsub subscriptions describe "$topic_dead_letter" --project="$project" --format='value(name)'; then
    change gcloud pubsub subscriptions delete "$topic_dead_letter" --project="$project"
  fi
  for topic in "$topic_requests" "$topic_checks" "$topic_results" "$topic_dead_letter"; do
    if query gcloud pubsub topics describe "$topic" --project="$project" --format='value(name)'; then
      change gcloud pubsub topics delete "$topic" --project="$project"
    fi
  done
  for parent in "${parents[@]}"; do
    revoke_organization "$parent"
  done
  if policy_has "$runtime_member" roles/datastore.user gcloud projects get-iam-policy "$project"; then
    change gcloud projects remove-iam-policy-binding "$project" --member="$runtime_member" \
      --role=roles/datastore.user --all
  fi
  for account in "$runtime_account" "$trigger_account"; do
    if query gcloud iam service-accounts describe "$account" --project="$project" --format='value(email)'; then
      change gcloud iam service-accounts delete "$account" --project="$project" --quiet
    fi
  done
  $dry_run || note "Done. Kept: the Firestore database, whose TTL policy goes on expiring the idempotency records," \
    "and the APIs, which other workloads in the project may use."
}

if $destroy; then destroy; else deploy; fi
