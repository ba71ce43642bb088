"""Generate the reasoner's and the verifier's fine-tuning data from the knowledge base, the lookup
tools' record shapes and ticket templates.

    .venv/bin/python examples/support/data/make_pipeline_data.py     # rewrites the four files

Why generated: the example has no production traffic, and a seeded generator is reproducible and
reviewable. Every reply below states only what a kb/*.md passage or the looked-up record says
(the facts are copied from the passages, numbers included), so an adapter trained on them learns
to write grounded replies, not to invent policy.

The reasoner is trained on a *fine-tuned chain of thought* (the seed's recommendation over "think
step by step"): its output type `Draft` first names the passage that applies (``policy``), then
what the record says (``record``), then the two-sentence reply (``draft``). Only ``draft`` reaches
the customer: the workflow merges the fields into its state and `compose` answers with ``draft``.

The passages in each row come from the example's real retrieval (`support_steps.retrieve`, hybrid
BM25 + MiniLM, the query the workflow sends), so the reasoner sees at training time what it sees in
the pipeline, including a wrong second passage. The record comes from the record shapes of
data/records.json with generated values (delivered / processing / shipped orders, active / locked
accounts), from a failed lookup (an id the records do not know), or is absent (no id).

The verifier is trained on (policy, ticket, record, reply) -> `Verdict` (reason, approved): the
good replies above and realistic bad ones made from them: a wrong id, a changed number or
deadline, a promise no passage makes, the reply to another question, an empty or cut-off reply.

Held out: the eval files use other ticket templates (EVAL_TEMPLATES per intent) than the train
files; the scenario inputs (scenarios.yaml, including its held-out part) and the demo tickets are
never training inputs (checked, as in make_training_data.py).

Files: reasoner_{train,eval}.jsonl ({"input": DraftInput, "target": Draft}),
verifier_{train,eval}.jsonl ({"input": VerifyInput, "target": Verdict}).
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
SUPPORT = HERE.parent
SEED = 11

sys.path.insert(0, str(HERE))
sys.path.insert(0, str(SUPPORT))
from make_training_data import (CLOSERS, ITEMS, OPENERS, URGENT, account_id,  # noqa: E402
                                order_id, protected_inputs)

from support_steps import REFERRAL  # noqa: E402  the answer to a ticket no policy covers
from support_steps import record_sentence  # noqa: E402  the reply's first sentence, from the record


@dataclass
class Intent:
    """One kind of ticket: its router category, the kb file whose passage answers it, which id it
    needs (order / account / none), ticket templates (the last EVAL_TEMPLATES are held out) and
    policy sentences (paraphrases of the passage, facts unchanged)."""

    name: str
    category: str
    kb: str | None
    needs: str | None  # "order" | "account" | None
    templates: list[str]
    policy: list[str]
    wants_id: bool = True  # ask for the id when the ticket has none
    n_eval_templates: int = 2


INTENTS: list[Intent] = [
    Intent("damaged", "refund", "damaged-items", "order", [
        "My {item} arrived broken, I want my money back.",
        "The {item} from order {order} is damaged. Can I get a refund?",
        "Order {order} came damaged, the {item} was smashed in the box.",
        "The {item} I received is cracked. What can you do?",
        "my {item} arrived in pieces, order {order}",
        "The box was crushed and the {item} inside is broken. Order {order}.",
        "I got my {item} today and it is damaged. Do I have to send it back?",
        "Refund request: the {item} from order {order} arrived broken.",
        "The {item} arrived with a big dent, order {order}. I want a replacement.",
        "Received order {order} but the {item} is shattered.",
        "Your courier broke my {item}. Order {order}, please sort it out.",
        "The {item} in order {order} is scratched and broken, can I get my money back?",
    ], [
        "Please reply within 30 days of delivery with a photo of the damage. You do not need to "
        "send the item back: we refund it in full, including shipping, or send a free "
        "replacement.",
        "You do not need to send a broken item back: we refund it in full, including shipping, "
        "or send a free replacement. Please reply within 30 days of delivery with a photo of "
        "the damage.",
    ]),
    Intent("return", "refund", "returns", "order", [
        "I changed my mind about the {item}. How do I return it?",
        "I want to return the {item} from order {order}, it does not fit.",
        "How do I send back the unused {item}? Order {order}.",
        "Can I return order {order}? I never used the {item}.",
        "The {item} is too small, I'd like to return it and get my money back.",
        "i want to send back the {item}, order {order}, how does it work",
        "How do returns work? I want to give back the {item}.",
        "I no longer need the {item} from order {order}. Can I return it for a refund?",
        "Please tell me how to return the {item}, order {order}.",
        "Return request for order {order}: the {item} is not what I expected.",
    ], [
        "Unused items can be returned within 30 days of delivery with the prepaid return label "
        "from the order page. Once the return arrives at our warehouse the refund starts and "
        "takes 5-7 business days to reach your account.",
        "You can return unused items within 30 days of delivery: print the prepaid return label "
        "from the order page. The refund starts once the return arrives at our warehouse and "
        "takes 5-7 business days.",
    ]),
    Intent("refund_status", "refund", "refunds", "order", [
        "When will I get my refund for order {order}?",
        "I returned the {item} {days} days ago, where is my refund?",
        "How long does a refund take? Order {order}.",
        "My refund for order {order} has not arrived yet.",
        "Still waiting for my money back for the {item}, order {order}.",
        "When do I get refunded for the {item}?",
        "Has my refund for order {order} been processed?",
        "How long until the refund for the {item} reaches my card?",
        "where is my refund?? order {order}",
        "You approved my refund {days} days ago, order {order}, but I have not received it.",
    ], [
        "Refunds are issued to the original payment method within 5-7 business days after we "
        "approve them. A refund needs the order id.",
        "We issue refunds to the original payment method within 5-7 business days after we "
        "approve them; a refund needs the order id.",
    ]),
    Intent("late", "shipping", "shipping-times", "order", [
        "Where is my package? Order {order} has not arrived yet.",
        "My {item} was supposed to arrive {days} days ago. Where is it?",
        "Has order {order} shipped yet? It has been {days} days.",
        "When will my {item} be dispatched? I ordered it {days} days ago.",
        "My order {order} is late, when will it be delivered?",
        "I ordered the {item} {days} days ago and it still has not shipped.",
        "Order {order} still has not arrived, what is going on?",
        "How long until order {order} ships?",
        "my {item} is taking forever, order {order}",
        "It has been {days} days and order {order} is still not here.",
        "Why has my order {order} not been sent yet?",
    ], [
        "Orders usually ship within 2 business days and standard shipping takes 3-5 business "
        "days after that. An order that has not shipped after 7 days is delayed; we apologise "
        "and upgrade it to express shipping for free.",
        "Orders usually ship within 2 business days, then standard shipping takes 3-5 business "
        "days. If an order has not shipped after 7 days it is delayed, and we upgrade it to "
        "express shipping for free.",
    ]),
    Intent("lost", "shipping", "lost-packages", "order", [
        "My package with the {item} seems to be lost in transit. Order {order}.",
        "Tracking for order {order} has not moved in {days} days.",
        "The parcel with my {item} never arrived and tracking is stuck.",
        "My parcel has been stuck at the sorting center for {days} days, order {order}.",
        "I think order {order} is lost, the tracking has not updated for a week.",
        "The courier lost my {item}. Order {order}.",
        "tracking shows no movement for order {order} since {days} days",
        "Is my package lost? Order {order} has shown the same tracking status for days.",
        "My {item} is lost somewhere, tracking has not changed in {days} days.",
        "Order {order}: the tracking has been frozen for {days} days.",
    ], [
        "If tracking shows no movement for 5 business days, the package may be lost, and we "
        "open a carrier investigation. If it is not found within 3 business days, we ship a "
        "replacement or refund the order.",
        "We open a carrier investigation when tracking shows no movement for 5 business days. "
        "If the package is not found within 3 business days, we ship a replacement or refund "
        "the order.",
    ]),
    Intent("double_charge", "billing", "double-charge", "account", [
        "I was charged twice this month, account {account}.",
        "There are two identical payments on my card. Account {account}.",
        "You billed me twice for the same thing, account number {account}.",
        "Why do I see a double charge on my statement?",
        "My card shows two charges of {amount}, account {account}.",
        "I paid twice by mistake, account {account}. Please refund one.",
        "double charge on my credit card!! account {account}",
        "I have been charged {amount} two times. My account id is {account}.",
        "Two payments of {amount} left my bank account, account {account}.",
        "Account {account}: the subscription was charged twice.",
    ], [
        "The second charge is usually a temporary authorization that disappears within 3 "
        "business days. If it is still there after 3 business days, send us the dates and we "
        "refund any duplicate charge within 5 business days.",
        "A second charge is usually a temporary authorization that disappears within 3 business "
        "days; if it is still there after that, send us the dates and we refund any duplicate "
        "charge within 5 business days.",
    ]),
    Intent("cancel_subscription", "billing", "subscriptions", "account", [
        "How do I cancel my monthly subscription? Account number {account}.",
        "Please stop my subscription, account {account}.",
        "I want to cancel my subscription before it renews.",
        "Cancel my plan please, account {account}.",
        "How can I stop the monthly renewal? Account {account}.",
        "I don't want the subscription anymore, account {account}.",
        "can you cancel my subscription, acct {account}",
        "Will I get this month back if I cancel my subscription? Account {account}.",
        "I'd like to end my subscription, my account id is {account}.",
        "How do I unsubscribe from the monthly plan?",
    ], [
        "You can cancel at any time in Account settings under Subscription. Cancelling stops "
        "the next renewal; the current month is not refunded unless you were charged by "
        "mistake.",
        "You can cancel the subscription at any time in Account settings under Subscription; "
        "this stops the next renewal. The current month is not refunded unless you were "
        "charged by mistake.",
    ]),
    Intent("payment_method", "billing", "payment-methods", None, [
        "Can I pay with PayPal or only by credit card?",
        "I want to update the credit card you use for my payments.",
        "Which payment methods do you accept?",
        "How do I change my card for payments?",
        "Do you take gift cards as payment?",
        "My card expired, where do I put the new one?",
        "can i pay by paypal",
        "How do I replace the card on file?",
        "Is it possible to pay with a debit card?",
        "Where can I update my payment card?",
    ], [
        "We accept credit and debit cards, PayPal and gift cards. You can update your card in "
        "Account settings under Payment.",
        "You can update your card in Account settings under Payment. We accept credit and debit "
        "cards, PayPal and gift cards.",
    ], wants_id=False),
    Intent("change_email", "account", "change-email", None, [
        "How can I change the email address on my account?",
        "I need to update my email, account {account}.",
        "Please change the email on my profile.",
        "How do I switch to a new email address?",
        "My old email no longer works, how do I change it? Account {account}.",
        "I want my account to use a different email.",
        "how to change email",
        "Where do I update the e-mail address of account {account}?",
        "Can I change the email I signed up with?",
        "I changed my email address, how do I update it on my account?",
    ], [
        "Sign in, open Account settings, choose Email and enter the new address. We send a "
        "confirmation link to the new address; the change takes effect after you click it.",
        "To change your email address, sign in, open Account settings, choose Email and enter "
        "the new address. The change takes effect after you click the confirmation link we send "
        "to it.",
    ], wants_id=False),
    Intent("password", "account", "password-reset", None, [
        "I forgot my password and cannot log in.",
        "How do I reset my password?",
        "I can't sign in to my account, it says wrong password. Account {account}.",
        "My login keeps failing even with the right password.",
        "The password reset link does not work anymore.",
        "I can't log in, account {account}. Help!",
        "forgot password, cant login",
        "My account {account} is locked after too many login attempts.",
        "It says my account is locked, what do I do?",
        "I tried to log in five times and now I am locked out. Account {account}.",
    ], [
        "Use Forgot password on the sign-in page; the reset link is valid for 1 hour. After 5 "
        "failed sign-in attempts the account is locked for 30 minutes for your security.",
        "Please use Forgot password on the sign-in page, and note that the reset link is valid "
        "for 1 hour. After 5 failed sign-in attempts the account is locked for 30 minutes.",
    ], wants_id=False),
    Intent("delete_account", "account", "delete-account", None, [
        "Please delete my account and all my data.",
        "How do I close my account permanently? Account {account}.",
        "I want to delete account {account}.",
        "Remove my account please.",
        "How can I get rid of my account?",
        "Delete my profile, account number {account}.",
        "i want my account deleted",
        "Can I delete my account while an order is still open?",
        "Please close account {account} for good.",
        "How long does it take to delete my account?",
    ], [
        "You can delete your account in Account settings under Privacy; deletion is permanent "
        "after 14 days. Open orders must be delivered or cancelled before the account can be "
        "deleted.",
        "Delete your account in Account settings under Privacy; the deletion is permanent after "
        "14 days. Any open orders must be delivered or cancelled first.",
    ], wants_id=False),
    Intent("other", "other", None, None, [
        "Do you sell gift wrapping?",
        "What are your opening hours on weekends?",
        "Are you hiring for summer jobs?",
        "Is the {item} available in blue?",
        "Do you offer discounts for students?",
        "Can I visit your warehouse?",
        "Do you have a loyalty program?",
        "Who designed the {item}?",
        "Do you donate to charities?",
        "Can you recommend a good {item} for a present?",
        "What is the weather like at your office?",
        "Do you have an app for Android?",
    ], [REFERRAL], wants_id=False),
]
EVAL_TEMPLATES = 2  # the last 2 templates of each intent are held out for the eval files


# ---- records -----------------------------------------------------------------------------------

def _date(rng: random.Random) -> str:
    return f"2026-{rng.randint(9, 11):02d}-{rng.randint(1, 28):02d}"


def order_record(oid: str, rng: random.Random, item: str) -> dict[str, Any]:
    status = rng.choice(["delivered", "delivered", "processing", "shipped"])
    rec: dict[str, Any] = {"order_id": oid, "status": status, "item": item}
    rec[{"delivered": "delivered_on", "processing": "ordered_on",
         "shipped": "shipped_on"}[status]] = _date(rng)
    rec["total_eur"] = round(rng.uniform(5, 250), 2)
    return rec


def account_record(aid: str, rng: random.Random) -> dict[str, Any]:
    user = rng.choice(["j.doe", "m.rossi", "a.khan", "l.chen", "s.muller", "p.silva"])
    return {"account_id": aid, "plan": rng.choice(["monthly", "monthly", "yearly", "none"]),
            "email": f"{user}@example.com", "status": rng.choice(["active", "active", "locked"])}


# ---- tickets -----------------------------------------------------------------------------------

TYPOS = {"package": "pakage", "received": "recieved", "account": "acount", "refund": "refnud",
         "please": "plz", "arrived": "arived", "password": "pasword", "address": "adress"}
ANGRY = ["This is ridiculous. ", "I am really angry. ", "Third time I am writing! ",
         "Terrible service. ", ""]


@dataclass
class Ticket:
    text: str
    intent: Intent
    order_id: str | None
    account_id: str | None
    item: str
    extra: dict[str, Any] = field(default_factory=dict)


def make_ticket(intent: Intent, template: str, rng: random.Random) -> Ticket:
    slots = {"item": rng.choice(ITEMS), "order": order_id(rng), "account": account_id(rng),
             "days": str(rng.randint(3, 21)),
             "amount": rng.choice(["$", "€", "£"]) + f"{rng.randint(5, 250)}.{rng.randint(0, 99):02d}"}
    text = template.format(**slots)
    oid = slots["order"] if "{order}" in template else None
    aid = slots["account"] if "{account}" in template else None
    r = rng.random()
    if r < 0.15:
        text = rng.choice(URGENT).format(text)
    elif r < 0.25:
        text = rng.choice(ANGRY) + text
    else:
        text = rng.choice(OPENERS) + text + rng.choice(CLOSERS)
    if rng.random() < 0.15:  # misspellings, as real traffic has them
        for a, b in TYPOS.items():
            if rng.random() < 0.5:
                text = text.replace(a, b)
    return Ticket(text, intent, oid, aid, slots["item"])


def lookup_for(t: Ticket, rng: random.Random) -> dict[str, Any] | None:
    """What the workflow's lookup step would hand on: a record, or None (failed / no id)."""
    if t.intent.category in ("refund", "shipping") and t.order_id:
        return order_record(t.order_id, rng, t.item) if rng.random() < 0.75 else None
    if t.intent.category in ("billing", "account") and t.account_id:
        return account_record(t.account_id, rng) if rng.random() < 0.75 else None
    return None


def reply_for(t: Ticket, lookup: dict[str, Any] | None, rng: random.Random,
              policy_text: str | None = None) -> tuple[str, str]:
    """(draft, record-note) for a ticket: the record sentence, then the policy sentences."""
    it = t.intent
    policy = policy_text or rng.choice(it.policy)
    if it.name == "other":
        return REFERRAL, "none needed"
    kind = it.needs or ("order" if it.category in ("refund", "shipping") else "account")
    rid = t.order_id if kind == "order" else t.account_id
    if it.needs is None and rid is None:
        return policy, "none needed"
    first, note = record_sentence(kind, rid, lookup, it.wants_id and it.needs is not None)
    if it.name == "password" and lookup and lookup.get("status") == "locked":
        first = (f"Account {rid} is locked for 30 minutes after 5 failed sign-in attempts.")
        policy = "Then use Forgot password on the sign-in page; the reset link is valid for 1 hour."
    return (f"{first} {policy}".strip(), note)


# ---- bad drafts for the verifier ---------------------------------------------------------------

NUMBER_SWAPS = [("30 days", "60 days"), ("5-7 business days", "1-2 business days"),
                ("3 business days", "10 business days"), ("5 business days", "24 hours"),
                ("1 hour", "24 hours"), ("30 minutes", "3 days"), ("14 days", "90 days"),
                ("2 business days", "2 weeks"), ("7 days", "3 weeks"), ("3-5 business days",
                "1 business day"), ("1-2 business days", "the same day"),
                ("in full", "50%"), ("for free", "for 9.99 EUR")]
PROMISES = ["We will also give you a 20% discount on your next order.",
            "You will get the refund within 24 hours.",
            "We will send a courier to pick it up tomorrow.",
            "As an apology we add a free gift card to your account.",
            "We refund you twice the amount.",
            "You can keep the item and we also send a new one for free by express."]
CUTS = ["You can use the following steps:", "", "Sorry,", "To do this, please",
        "I understand your problem. We will"]


def corrupt(kind: str, good: str, t: Ticket, other: str, rng: random.Random) -> str | None:
    if kind == "wrong_id":
        rid = t.order_id or t.account_id
        if not rid or rid not in good:
            return None
        new = order_id(rng) if rid == t.order_id else account_id(rng)
        return good.replace(rid, new)
    if kind == "wrong_fact":
        swaps = [(a, b) for a, b in NUMBER_SWAPS if a in good]
        if not swaps:
            return None
        a, b = rng.choice(swaps)
        return good.replace(a, b, 1)
    if kind == "unsupported_promise":
        sents = re.split(r"(?<=\.) ", good)
        if rng.random() < 0.5 and len(sents) > 1:
            sents[-1] = rng.choice(PROMISES)
        else:
            sents.append(rng.choice(PROMISES))
        return " ".join(sents)
    if kind == "off_topic":
        return other
    if kind == "incomplete":
        if rng.random() < 0.5:
            return rng.choice(CUTS) or "."
        words = good.split()
        return " ".join(words[: rng.randint(3, max(4, len(words) // 3))])
    raise ValueError(kind)


BAD_KINDS = ["wrong_id", "wrong_fact", "unsupported_promise", "off_topic", "incomplete"]


# ---- assembly ----------------------------------------------------------------------------------

def passages_for(text: str, category: str) -> list[dict[str, Any]]:
    from support_schemas import RetrievalInput
    from support_steps import TRAIN_PASSAGES, retrieve

    return [p.model_dump() for p in retrieve(RetrievalInput(text=text, category=category),
                                             k=TRAIN_PASSAGES).passages]


def build(split: str, n_per_intent: int, rng: random.Random) -> list[tuple[Ticket, dict, list]]:
    rows, seen = [], set()
    for it in INTENTS:
        pool = it.templates[-EVAL_TEMPLATES:] if split == "eval" else it.templates[:-EVAL_TEMPLATES]
        made = tries = 0
        while made < n_per_intent and tries < n_per_intent * 50:
            tries += 1
            t = make_ticket(it, rng.choice(pool), rng)
            key = " ".join(t.text.lower().split())
            if key in seen or key in protected_inputs() or key in protected_scenarios():
                continue
            seen.add(key)
            rows.append((t, lookup_for(t, rng), []))
            made += 1
    rng.shuffle(rows)
    return rows


def protected_scenarios() -> frozenset[str]:
    """The development scenarios' inputs: never training inputs. The held-out part
    (scenarios_heldout.yaml) is not read here at all; tests/test_support_data.py checks that no
    training input equals one of its tickets."""
    out = set()
    for f in (SUPPORT / "scenarios.yaml",):
        out |= set(re.findall(r'text: "((?:[^"\\]|\\.)*)"', f.read_text()))
    return frozenset(" ".join(t.lower().split()) for t in out)


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from support_schemas import Draft, DraftInput, Verdict, VerifyInput

    sizes = {"train": int(os.environ.get("N_TRAIN", 60)), "eval": int(os.environ.get("N_EVAL", 6))}
    rng = random.Random(SEED)
    hits: dict[str, list[int]] = {}
    for split, n in sizes.items():
        reasoner, verifier = [], []
        rows = build(split, n, rng)
        for t, lookup, _ in rows:
            it = t.intent
            passages = passages_for(t.text, it.category)
            ids = [p["id"] for p in passages]
            hit = next((i for i in ids if it.kb and i.startswith(it.kb + "#")), None)
            hits.setdefault(it.name, []).append(int(hit is not None or it.kb is None))
            draft, note = reply_for(t, lookup, rng)
            inp = DraftInput(text=t.text, category=it.category, passages=passages,
                             order_id=t.order_id, account_id=t.account_id, lookup=lookup)
            target = Draft(policy=hit or "none", record=note, draft=draft)
            reasoner.append({"input": inp.model_dump(mode="json"),
                             "target": target.model_dump(mode="json")})
            # verifier: the good reply (a fresh paraphrase) and, for about half, a bad one
            good, _ = reply_for(t, lookup, rng)
            vin = dict(text=t.text, passages=passages, lookup=lookup)
            verifier.append({"input": VerifyInput(draft=good, **vin).model_dump(mode="json"),
                             "target": Verdict(reason="ok", approved=True).model_dump()})
            for _ in range(2 if rng.random() < 0.1 else 1):
                kinds = BAD_KINDS[:]
                rng.shuffle(kinds)
                for kind in kinds:
                    others = [o for o in INTENTS if o.name != it.name]
                    o = rng.choice(others)
                    ot = Ticket(t.text, o, t.order_id, t.account_id, t.item)
                    other, _ = reply_for(ot, lookup, rng)
                    bad = corrupt(kind, good, t, other, rng)
                    if bad is None or bad == good:
                        continue
                    verifier.append({
                        "input": VerifyInput(draft=bad or ".", **vin).model_dump(mode="json"),
                        "target": Verdict(reason=kind, approved=False).model_dump()})
                    break
        rng.shuffle(verifier)
        cap = int(os.environ.get("MAX_VERIFIER_TRAIN", 0)) if split == "train" else 0
        verifier = verifier[:cap] if cap else verifier  # training time grows with rows
        for name, out in (("reasoner", reasoner), ("verifier", verifier)):
            (HERE / f"{name}_{split}.jsonl").write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
            print(f"{name}_{split}.jsonl: {len(out)} rows")
    print("retrieval hit rate (the intent's kb passage among the 2 retrieved):")
    for k, v in hits.items():
        print(f"  {k:<20} {sum(v) / len(v):.2f}  (n={len(v)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
