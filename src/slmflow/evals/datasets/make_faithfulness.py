"""Writes faithfulness.jsonl: (context, answer, label) pairs over the support example's policy
knowledge base. Labelled by hand by the slmflow evals engineer (an AI coding agent) when the set
was written: each answer was composed *for* its label, faithful answers restate only what the
passage says, unfaithful ones change a number, a condition or an action (wrong but plausible) or
add a claim the passage does not make. Not a sample of model outputs; see docs/evals.md."""
import json
from pathlib import Path

KB = Path(__file__).resolve().parents[4] / "examples" / "support" / "kb"
F, U = "faithful", "unfaithful"
ITEMS = {
 "change-email": [
  ("Sign in, open Account settings, choose Email and enter the new address; it changes once you click the confirmation link.", F),
  ("We send a confirmation link to your new address and the change applies after you click it.", F),
  ("The new email address takes effect immediately, no confirmation is needed.", U),
  ("To change your email, call our support line and we will update it within 24 hours.", U)],
 "damaged-items": [
  ("Reply within 30 days of delivery with the order id and a photo; you do not need to send the broken item back.", F),
  ("A damaged item is refunded in full, including shipping, or we send a free replacement.", F),
  ("Please send the broken item back to us first; the refund does not include shipping.", U),
  ("You have 7 days after delivery to report a damaged item.", U)],
 "delete-account": [
  ("You can delete your account in Account settings under Privacy; deletion becomes permanent after 14 days.", F),
  ("Open orders must be delivered or cancelled before the account can be deleted.", F),
  ("Account deletion is permanent right away and open orders are cancelled automatically.", U),
  ("To delete your account, email us a copy of your ID.", U)],
 "double-charge": [
  ("A second charge is usually a temporary authorization that disappears within 3 business days.", F),
  ("If the duplicate is still there after 3 business days, send the account id and dates and we refund it within 5 business days.", F),
  ("Duplicate charges are refunded within 30 days once you send a bank statement.", U),
  ("Being charged twice means your subscription was upgraded to the annual plan.", U)],
 "lost-packages": [
  ("If tracking shows no movement for 5 business days the package may be lost; send us the order id.", F),
  ("We open a carrier investigation and ship a replacement or refund if the package is not found within 3 business days.", F),
  ("A package counts as lost after 2 business days without movement.", U),
  ("Lost packages are the carrier's responsibility, so please contact the carrier for a refund.", U)],
 "order-cancellation": [
  ("You can cancel an order free of charge until it ships, from the order page with Cancel order.", F),
  ("Once an order has shipped it cannot be cancelled; return it when it arrives.", F),
  ("Orders can be cancelled for free up to 30 days after they ship.", U),
  ("Cancelling an order costs a 10 percent fee.", U)],
 "password-reset": [
  ("Use Forgot password on the sign-in page; the reset link is valid for 1 hour.", F),
  ("After 5 failed sign-in attempts the account is locked for 30 minutes.", F),
  ("The password reset link stays valid for 7 days.", U),
  ("After 3 failed attempts your account is permanently blocked until you call support.", U)],
 "payment-methods": [
  ("We accept credit and debit cards, PayPal and gift cards.", F),
  ("A failed payment is retried once after 24 hours and the order ships after it succeeds.", F),
  ("We accept bank transfers and cryptocurrency as well as cards.", U),
  ("A failed payment cancels the order immediately.", U)],
 "refunds": [
  ("Refunds go to the original payment method within 5-7 business days after approval.", F),
  ("Items can be refunded within 30 days of delivery if they are unused or arrived damaged.", F),
  ("Refunds are paid as store credit within 24 hours.", U),
  ("Used items can be refunded within 90 days of delivery.", U)],
 "returns": [
  ("Unused items can be returned within 30 days of delivery using the prepaid label from the order page.", F),
  ("The refund starts when the return arrives at our warehouse and takes 5-7 business days.", F),
  ("Returns must be shipped at your own cost with a label you buy.", U),
  ("You can return any item within 60 days, used or not.", U)],
 "shipping-times": [
  ("Standard shipping takes 3-5 business days after the order ships; express takes 1-2 business days.", F),
  ("If an order has not shipped after 7 days we upgrade it to express shipping for free.", F),
  ("Standard shipping takes 10-14 business days.", U),
  ("Delayed orders get a 20 percent discount code.", U)],
 "subscriptions": [
  ("Subscriptions renew monthly on your sign-up day and you can cancel any time in Account settings under Subscription.", F),
  ("Cancelling stops the next renewal; the current month is not refunded unless you were charged by mistake.", F),
  ("Cancelling a subscription refunds the current month in full.", U),
  ("Subscriptions renew every year and can only be cancelled by phone.", U)],
 "warranty": [
  ("Electronics have a 1 year warranty against defects; contact us with the order id and a description of the fault.", F),
  ("The warranty does not cover accidental damage or normal wear.", F),
  ("Electronics come with a 3 year warranty that covers accidental damage.", U),
  ("Warranty repairs require you to visit one of our stores.", U)],
}
rows = []
for stem, answers in ITEMS.items():
    text = " ".join(l for l in (KB / f"{stem}.md").read_text().splitlines()
                    if l.strip() and not l.startswith("#"))
    for i, (a, label) in enumerate(answers):
        rows.append({"id": f"{stem}-{i}", "input": a, "context": text, "expected": label,
                     "metadata": {"kind": ["paraphrase", "paraphrase", "contradiction",
                                           "invention"][i]}})
out = Path(__file__).with_name("faithfulness.jsonl")
out.write_text("".join(json.dumps(r) + "\n" for r in rows))
print(len(rows), "rows ->", out)
