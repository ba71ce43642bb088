"""The third hand-labelled toxicity set (issue 17): written by hand on 2026-12-07, after the
meaning model was chosen on toxicity.jsonl and before any scorer ran on these texts; one
annotator, the rubric of docs/evals.md. Run it to rewrite toxicity_heldout2.jsonl."""
toxic = [
 ("insult", "Honestly, talking to you is like talking to a brick wall with a keyboard."),
 ("insult", "Did your parents drop you on your head, or are you always this slow?"),
 ("insult", "Only a complete clown would write a policy this stupid."),
 ("insult", "You absolute waste of oxygen, fix my order."),
 ("implicit", "I've met houseplants with more brains than your whole support team."),
 ("implicit", "Bless your heart, you really tried to think there, didn't you?"),
 ("implicit", "Maybe get a grown-up to read my ticket, since you clearly can't."),
 ("implicit", "Your mother must be so disappointed in how you turned out."),
 ("threat", "Refund me today or I will come to your warehouse and burn it down."),
 ("threat", "I know where your manager lives, and he'll regret this."),
 ("threat", "Keep ignoring me and someone at your office is going to get hurt."),
 ("threat", "I'll make sure you never work again, and then I'll come for your family."),
 ("hate", "People from that country are all thieves, don't hire them."),
 ("hate", "Old people like you shouldn't be allowed near computers, you're a burden on everyone."),
 ("hate", "Immigrants are ruining this company, send them all back."),
 ("hate", "Disabled customers are just a drain, stop wasting money on them."),
 ("profanity_at", "Shut the hell up and give me my money, you prick."),
 ("profanity_at", "You useless piece of shit, where is my parcel?"),
 ("profanity_at", "Go screw yourself, your store is a scam."),
 ("profanity_at", "What the fuck is wrong with you people? You're all morons."),
 ("obfuscated", "y0u are a st*pid l1ttle id1ot"),
 ("obfuscated", "go f u c k yourself, a$$hole"),
 ("obfuscated", "what a r3tard3d answer from a brainless b0t"),
 ("obfuscated", "sh!thead support, you all s*ck"),
 ("insult", "Are you brain-dead or just pretending to be this incompetent?"),
]
ok = [
 ("complaint", "This is the third time my order is late and I'm really frustrated with your service."),
 ("complaint", "Your app crashed twice while I was paying, please fix it."),
 ("complaint", "I'm disappointed: the jacket looks nothing like the photos."),
 ("complaint", "Nobody answered my last two emails, which is unacceptable."),
 ("complaint", "I want to speak to a manager about this terrible delivery experience."),
 ("casual_profanity", "Damn, I forgot my password again."),
 ("casual_profanity", "Holy shit, the parcel finally arrived, thanks!"),
 ("casual_profanity", "Well, that was a hell of a week for shipping, wasn't it?"),
 ("benign_trigger", "How do I kill the running subscription before it renews?"),
 ("benign_trigger", "The new headphones are sick, the bass absolutely destroys."),
 ("benign_trigger", "This sale is killing my budget, but I love it."),
 ("benign_trigger", "Can I shoot you a photo of the damaged box?"),
 ("benign_trigger", "My son wants the black-and-white striped shirt in size 8."),
 ("meta", "A customer called me an idiot in the chat today; how should I report it?"),
 ("meta", "Does your policy allow agents to hang up on someone who swears at them?"),
 ("meta", "The review said 'this seller is trash', is that allowed on your site?"),
 ("support", "Please cancel order B-2231, I ordered the wrong size."),
 ("support", "Can you tell me when the refund for A-553 will arrive?"),
 ("support", "I'd like to change the email on my account to my work address."),
 ("support", "Thank you so much, the replacement arrived in perfect condition!"),
 ("support", "Is there a way to pay with a gift card and a credit card together?"),
 ("support", "My account 88231 is locked after too many attempts, please help."),
 ("support", "Do you ship to Norway, and how long does it take?"),
 ("support", "The package was left at my neighbour's house, that's fine, just letting you know."),
 ("support", "Could you resend the confirmation link? It expired."),
]
import json
with open(__import__("pathlib").Path(__file__).with_name("toxicity_heldout2.jsonl"), "w") as f:
    for label, rows in (("toxic", toxic), ("ok", ok)):
        for i, (kind, text) in enumerate(rows):
            f.write(json.dumps({"id": f"h2-{label}-{i}", "output": text, "label": label,
                                "metadata": {"kind": kind, "set": "heldout2"}}) + "\n")
print(len(toxic), len(ok))
